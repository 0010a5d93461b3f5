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

# Leaks that tests make on purpose are not the engine's: a recursive operation that
# captures its own handle (nested.rs's fib) is a reference cycle its author made.
cat > target/memcheck.supp <<'SUPP'
{
   fib: a recursive operation holding its own handle (a cycle the test makes)
   Memcheck:Leak
   match-leak-kinds: definite
   ...
   fun:*fib_engine*
}
{
   a chain of operations each holding the next one's handle (a cycle the test makes)
   Memcheck:Leak
   match-leak-kinds: definite
   ...
   fun:*deep_chains_finish_on_one_and_two_lanes*
}
SUPP

memcheck() {
  # Valgrind runs threads one at a time: single-threaded test harness.
  valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
    --errors-for-leak-kinds=definite --show-leak-kinds=definite --track-origins=yes \
    --suppressions=target/memcheck.supp --quiet "$@" --test-threads=1
}

status=0
echo "== engine unit tests: token, lanes"
memcheck "$lib" "${FILTER:-token}" || status=$?
# Two lanes tests assert an order that depends on 1 ms of aging, which memcheck's
# slowdown turns around; they exercise no code the others do not.
[ -n "${FILTER:-}" ] || memcheck "$lib" lanes --skip short_light_batches_run_before_long_ones \
  --skip a_heavy_backlog_that_outweighs_the_light_delay || status=$?
echo "== end-to-end: tokens, lanes, nested"
for group in ${FILTER:-tokens:: lanes:: nested::}; do
  # Skipped: tests whose assertions are about timing (memcheck runs 20-50x slower),
  # and a test that counts the process's threads.
  memcheck "$it" "$group" --skip a_failed_build \
    --skip a_parents_logged_run_time_leaves_out --skip waiting_callers_help_only_a_backlog \
    || status=$?
done
if [ "$status" -eq 0 ]; then echo "memcheck: no errors"; else echo "memcheck: errors (exit $status)"; fi
exit "$status"
