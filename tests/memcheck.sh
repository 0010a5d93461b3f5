#!/usr/bin/env bash
# Runs the token and lane tests under Valgrind's memcheck (Debian: apt-get install -y
# valgrind): the engine's unsafe code (the token slots, the batch and single-call jobs,
# the lanes' hand-offs) exercised by its own tests, with every invalid read or write,
# use of uninitialised memory and definite leak an error. Exits non-zero on any.
#
#   bash tests/memcheck.sh            # the engine's token/lanes unit tests + tests/it tokens, lanes, nested
#   FILTER=tokens bash tests/memcheck.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install -y valgrind)"; exit 2; }

# Debug builds: memcheck sees through fewer inlined frames, and the tests run as CI's do.
lib=$(cargo test -p tokengate --lib --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep -v null | tail -1)
it=$(cargo test --test it --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep -v null | tail -1)

memcheck() {
  # Valgrind runs threads one at a time: single-threaded test harness, generous timeouts.
  valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
    --errors-for-leak-kinds=definite --show-leak-kinds=definite --track-origins=yes \
    --quiet "$@" --test-threads=1
}

status=0
echo "== engine unit tests: token, lanes"
memcheck "$lib" "${FILTER:-token}" || status=$?
[ -n "${FILTER:-}" ] || memcheck "$lib" lanes || status=$?
echo "== end-to-end: tokens, lanes, nested"
for group in ${FILTER:-tokens:: lanes:: nested::}; do
  memcheck "$it" "$group" --skip in_headless --skip a_failed_build || status=$?
done
if [ "$status" -eq 0 ]; then echo "memcheck: no errors"; else echo "memcheck: errors (exit $status)"; fi
exit "$status"
