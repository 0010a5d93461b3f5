#!/usr/bin/env bash
# What each remote fault costs a run: `run mixed --tokens 40000 --seed 3 --placement remote`
# against a real nats-server on loopback, with `tokengate worker` processes killed
# (SIGKILL), hung (SIGSTOP for 15 s) or the server killed 2 s into the run. Prints, per
# fault and run, the wall time added over a local run of the same stream, and the run's
# account (lost, resolved twice, digest equal to the local run's).
#
#   cargo build --release --workspace && tests/bench/remote_faults.sh [RUNS]
#   (FAULTS="none only-worker-killed" picks faults; BIN=path/to/tokengate another build)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
BIN=${BIN:-target/release/tokengate}
NATS=${NATS:-$(command -v nats-server || echo /usr/sbin/nats-server)}
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT
PORT=$((20000 + RANDOM % 20000))
SECRET="bench$RANDOM$RANDOM"
echo "$SECRET" > "$DIR/token"
URL="nats://127.0.0.1:$PORT"
RUN=(run mixed --tokens 40000 --seed 3 --json)
REMOTE=(--placement remote --nats "$URL" --nats-token-file "$DIR/token")

start_server() {
    "$NATS" -js -a 127.0.0.1 -p "$PORT" --auth "$SECRET" -sd "$DIR/store" >/dev/null 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return; sleep 0.05; done
    echo "nats-server did not start" >&2; exit 1
}
worker() { "$BIN" -q worker --workers 1 ${WORKER_ARGS:-} --nats "$URL" --nats-token-file "$DIR/token" >/dev/null 2>&1 & echo $!; }
field() { python3 -c "import json,sys; d=json.load(open('$1')); print(d$2)"; }

"$BIN" -q "${RUN[@]}" > "$DIR/local.json"
LOCAL_WALL=$(field "$DIR/local.json" "['wall_s']")
LOCAL_DIGEST=$(field "$DIR/local.json" "['result_digest']")
echo "local run: wall ${LOCAL_WALL} s, digest $LOCAL_DIGEST"

one_run() { # $1: fault name
    start_server
    local w1 w2=""
    w1=$(worker)
    [ "$1" = one-of-two-killed ] || [ "$1" = one-of-two-hung ] || [ "$1" = none ] && w2=$(worker)
    sleep 1.5
    "$BIN" -q "${RUN[@]}" "${REMOTE[@]}" > "$DIR/run.json" 2>/dev/null &
    local run=$!
    sleep 2
    case "$1" in
        one-of-two-killed|only-worker-killed) kill -KILL "$w1" ;;
        one-of-two-hung) kill -STOP "$w1"; (sleep 15; kill -CONT "$w1" 2>/dev/null) & ;;
        server-killed) kill -KILL "$SERVER" ;;
    esac
    wait "$run" || true
    kill -KILL "$w1" ${w2:+"$w2"} "$SERVER" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$DIR/store"
    python3 - "$DIR/run.json" "$LOCAL_WALL" "$LOCAL_DIGEST" "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
added = d["wall_s"] - float(sys.argv[2])
print(f"{sys.argv[4]:<20} +{added:6.2f} s  lost {d['lost']}  twice {d['double_resolved']}  "
      f"digest {'equal' if d['result_digest'] == sys.argv[3] else 'DIFFERENT'}  "
      f"remote {d.get('remote_tokens', 0)}  fell back {d.get('remote', {}).get('fell_back', 0)}  "
      f"duplicates {d.get('duplicate_results', 0)}  "
      f"overhead p50 {d.get('remote', {}).get('overhead_p50_us', 0):.0f} us")
PY
}

for fault in ${FAULTS:-none one-of-two-killed one-of-two-hung only-worker-killed server-killed}; do
    for _ in $(seq "$RUNS"); do one_run "$fault"; done
done
