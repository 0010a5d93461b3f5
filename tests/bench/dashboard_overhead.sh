#!/usr/bin/env bash
# The dashboard's cost to a long Leibniz run: runs with the control port on and no
# client, interleaved with runs with 3 dashboard-like clients (dashboard_clients.mjs:
# subscribe every 250 ms with lanes and model, parse every event) and 5 /metrics
# scrapes; also the CPU time of the engine's control thread (tokengate-io) while the
# clients are connected. The arms take turns going first; both start the same node
# process before the engine (with 3 clients or none), so node's start-up is outside
# the run in both. Needs a release build and node >= 20.
#   cargo build --release --workspace
#   tests/bench/dashboard_overhead.sh [TERMS (300000000)] [ROUNDS (6)]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin="${BIN:-$repo/target/release/tokengate}"
clients_js="$repo/tests/bench/dashboard_clients.mjs"
terms=${1:-300000000}
rounds=${2:-6}
port=${PORT:-7433}
# The clients stand for browsers, which usually sit on other machines; here they share
# the 2 cores, so their own CPU time is measured too (CLIENT_NICE=N to renice them;
# at 19 they starve and never subscribe while the lanes are busy).
client_nice=${CLIENT_NICE:-0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
io_ns() { awk '{print $1}' "$(grep -l '^tokengate-io$' /proc/"$1"/task/*/comm | sed 's/comm$/schedstat/')"; }
# CPU time (ns) of a process, all its threads.
cpu_ns() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) * 1e9 / hz}' /proc/"$1"/stat; }
for round in $(seq 1 "$rounds"); do
  # The arms take turns going first (0 then 3 in odd rounds, 3 then 0 in even ones), so
  # a drift within a round does not favour one arm.
  arms="0 3"; [ $((round % 2)) -eq 0 ] && arms="3 0"
  for clients in $arms; do
    # Both arms start the same node process before the engine (with 3 clients, or
    # with none: it then only waits), so node's own start-up falls outside the run in
    # both; the clients connect as soon as the port answers.
    rm -f tokengate-control.token
    nice -n "$client_nice" node --experimental-websocket "$clients_js" "127.0.0.1:$port" tokengate-control.token "$clients" 2> node.log &
    node=$!
    for _ in $(seq 200); do grep -q ready node.log 2>/dev/null && break; sleep 0.05; done
    "$bin" run leibniz --terms "$terms" --control "127.0.0.1:$port" --json > out.json 2> err.log &
    run=$!
    for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
    # Both arms do the same harness work while the run goes on (counter reads, five
    # /metrics scrapes with curl); only the dashboard clients differ. Arithmetic waits
    # until the run has ended.
    sleep 1
    io_before=$(io_ns $run); node_before=$(cpu_ns $node); t0=$(date +%s%N)
    scrapes=""
    for _ in $(seq 5); do
      scrapes="$scrapes $(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $(cat tokengate-control.token)" "http://127.0.0.1:$port/metrics")"
      sleep 0.5
    done
    io_after=$(io_ns $run); node_after=$(cpu_ns $node); t1=$(date +%s%N)
    wait $run
    kill "$node" 2>/dev/null || true
    wait "$node" 2>/dev/null || true
    extra="metrics_s$scrapes control_thread_cpu_share $(python3 -c "print(f'{($io_after-$io_before)/($t1-$t0):.5f}')")"
    extra="$extra clients_cpu_share $(python3 -c "print(f'{($node_after-$node_before)/($t1-$t0):.5f}')") ($(tail -1 node.log))"
    rate=$(python3 -c "import json; print(round(json.load(open('out.json'))['tokens_per_s']))")
    echo "round $round clients $clients tokens_per_s $rate $extra"
  done
done | tee runs.txt
python3 - runs.txt <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for clients in ("0", "3"):
    rates = [int(r[5]) for r in rows if r[3] == clients]
    print(f"clients {clients}: median {statistics.median(rates):,.0f} tokens/s, "
          f"range {min(rates):,}..{max(rates):,} ({len(rates)} runs)")
by_round = {}
for r in rows:
    by_round.setdefault(r[1], {})[r[3]] = int(r[5])
pairs = [arms["3"] / arms["0"] for arms in by_round.values() if len(arms) == 2]
import random
random.seed(1)
boots = sorted(statistics.median(random.choices(pairs, k=len(pairs))) for _ in range(10000))
print(f"3 clients / none, paired by round: median {statistics.median(pairs):.3f}, "
      f"range {min(pairs):.3f}..{max(pairs):.3f}, 95% bootstrap interval of the median "
      f"{boots[250]:.3f}..{boots[9749]:.3f} ({len(pairs)} pairs)")
scrapes = [float(x) for r in rows if r[3] == "3" for x in r[7:12]]
idle_scrapes = [float(x) for r in rows if r[3] == "0" for x in r[7:12]]
print(f"/metrics with the clients: median {statistics.median(scrapes)*1e3:.2f} ms, max "
      f"{max(scrapes)*1e3:.2f} ms ({len(scrapes)} scrapes); without: median "
      f"{statistics.median(idle_scrapes)*1e3:.2f} ms, max {max(idle_scrapes)*1e3:.2f} ms")
shares = [float(r[13]) for r in rows if r[3] == "3"]
print(f"control thread CPU with 3 clients: median {statistics.median(shares)*100:.3f}% of a core")
clients = [float(r[15]) for r in rows if r[3] == "3"]
print(f"the 3 clients' own CPU (node, same machine): median {statistics.median(clients)*100:.2f}% "
      f"of a core = {statistics.median(clients)*50:.2f}% of the 2 cores the lanes use")
PY
