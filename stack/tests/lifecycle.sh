#!/usr/bin/env bash
# The stack's own contract, on ports and a run directory of its own so it never touches the stack
# the other tests use:
#   1. `up` starts every service and each answers;
#   2. a second `up` starts nothing (same pids, no "started" line);
#   3. `down` leaves no process of ours running and every port closed.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
stack="$here/../stack.sh"

run_dir="$(mktemp -d /tmp/tributary-lifecycle.XXXXXX)"
export TRIBUTARY_RUN_DIR="$run_dir"
export TRIBUTARY_KAFKA_BROKERS=127.0.0.1:29092
export TRIBUTARY_SCHEMA_REGISTRY_URL=http://127.0.0.1:28081
export TRIBUTARY_MONGODB_URL=mongodb://127.0.0.1:28017
export TRIBUTARY_ELASTICSEARCH_URL=http://127.0.0.1:29200
ports=(29092 28081 28017 29200)
services=(nisshi registry mongodb elasticsearch)

passed=0 failed=0
check() { # description, then a command that must succeed
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $what"; else failed=$((failed + 1)); echo "FAIL $what"; fi
}
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pids() { for s in "${services[@]}"; do cat "$run_dir/pids/$s.pid" 2>/dev/null || echo none; done; }
all_answer() { for p in "${ports[@]}"; do answers "$p" || return 1; done; }
none_answer() { for p in "${ports[@]}"; do answers "$p" && return 1; done; return 0; }
none_alive() { for p in "$@"; do kill -0 "$p" 2>/dev/null && return 1; done; return 0; }
cleanup() { bash "$stack" down >/dev/null 2>&1; rm -rf "$run_dir"; }
trap cleanup EXIT

first=$(bash "$stack" up 2>&1); rc=$?
check "first up succeeds" test $rc -eq 0 || echo "$first"
check "every service answers after up" all_answer
check "status reports every service up" bash "$stack" status
before=$(pids)
check "up wrote a pid for each service it started" bash -c "! grep -q none <<<'$before'"

second=$(bash "$stack" up 2>&1); rc=$?
check "second up succeeds" test $rc -eq 0
check "second up starts nothing" bash -c "! grep -q ': started' <<<'$second'"
check "second up keeps the same pids" test "$before" = "$(pids)"

# shellcheck disable=SC2086
bash "$stack" down >/dev/null 2>&1
check "down stops every process up started" none_alive $before
check "down closes every port" none_answer
check "down removes the pid files" bash -c "! ls '$run_dir'/pids/*.pid >/dev/null 2>&1"

echo "lifecycle: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
