#!/usr/bin/env bash
# The end-to-end demo on the local stack (`make demo`, which brings the stack up first):
# topics and schemas, the pipeline's long-running processes in the background, a seeded
# workload through the load generator, then a summary once every sink has caught up.
# DEMO_ORDERS (default 20000) sizes the workload; DEMO_SEED picks it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=stack/env.sh
source "$here/env.sh"
bin="$CARGO_TARGET_DIR/debug/tributary"
logs="$TRIBUTARY_RUN_DIR/logs"
mkdir -p "$logs"

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}
trap stop_all EXIT

"$bin" topics create >/dev/null
"$bin" schemas register >/dev/null
echo "demo: topics created, schemas registered"

for store in postgres mongodb redis elasticsearch; do
  "$bin" sink --store "$store" >"$logs/demo-sink-$store.log" 2>&1 &
  pids+=($!)
done
echo "demo: sinks running (logs in $logs/demo-sink-*.log)"

"$bin" loadgen --seed "${DEMO_SEED:-42}" --orders "${DEMO_ORDERS:-20000}"
"$bin" summary --wait 600
echo "demo: each sink serves /metrics and /health on the address in its log"
