#!/usr/bin/env bash
# The end-to-end demo on the local stack (`make demo`, which brings the stack up first):
# topics and schemas, the pipeline's long-running processes (domain processors and the four
# sinks) in the background, a seeded workload through the load generator, then a summary once
# every processor and sink has caught up, with the saga's invariants checked over the log.
# Exits non-zero when an invariant is broken or the views did not catch up.
# DEMO_ORDERS (default 20000) sizes the workload (with restocks, a few declines, stock-outs and
# cancellations); DEMO_SEED picks it; DEMO_RATE (commands per second, default 150; 0 for as fast
# as the load generator goes) paces it: unpaced, 20 000 orders arrive in ~2 s and, on 2 cores,
# most wait past the saga timeout (measured: p50 30.7 s, 16 129 TIMEOUT cancellations). DEMO_SAGA_TIMEOUT (seconds, default 30, the processors' own
# default) is how long the saga waits for inventory and payments; orders that wait past it are
# cancelled as TIMEOUT (the summary shows them, and the invariants still hold). Last,
# `reconcile --store all` replays the log into each store's expected view and fails the demo on
# any drift. The binary is $TRIBUTARY_BIN (stack/env.sh), the release build `make up` makes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=stack/env.sh
source "$here/env.sh"
bin="$TRIBUTARY_BIN"
logs="$TRIBUTARY_RUN_DIR/logs"
mkdir -p "$logs"
# A broker holding earlier runs is slow (its compaction sweep keeps a core busy, see `reset` in
# stack.sh): say so rather than let the orders time out unexplained.
broker_mb=$(du -sm "$TRIBUTARY_RUN_DIR/data/nisshi" 2>/dev/null | cut -f1 || echo 0)
if [ "${broker_mb:-0}" -gt 300 ]; then
  echo "demo: the local broker holds ${broker_mb} MB of earlier runs; its compaction then keeps a core busy and many orders may time out. 'make reset' (deletes the stack's data) gives the measured figures."
fi

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

"$bin" process --app all --state-dir "$TRIBUTARY_RUN_DIR/state" \
  --saga-timeout-secs "${DEMO_SAGA_TIMEOUT:-30}" \
  --metrics-listen 127.0.0.1:9464 >"$logs/demo-processors.log" 2>&1 &
pids+=($!)
echo "demo: processors running (log in $logs/demo-processors.log, metrics on http://127.0.0.1:9464/metrics)"

for store in postgres mongodb redis elasticsearch; do
  "$bin" sink --store "$store" >"$logs/demo-sink-$store.log" 2>&1 &
  pids+=($!)
done
echo "demo: sinks running (logs in $logs/demo-sink-*.log)"

start_ms="$(date +%s%3N)"
# Each run's ids are its own (same seed, same shape), so a second demo adds to the views.
rate=()
if [ "${DEMO_RATE:-150}" != 0 ]; then rate=(--rate "${DEMO_RATE:-150}"); fi
"$bin" loadgen --seed "${DEMO_SEED:-42}" --orders "${DEMO_ORDERS:-20000}" --id-prefix "run$(date +%s)-" "${rate[@]}"
"$bin" summary --wait 900 --invariants --since-ms "$start_ms"
echo "demo: reconciling every store with the log (replays every event topic; zero drift or the demo fails)"
# The per-store lines on the terminal; the whole report (with its metrics) in the log.
rc=0
"$bin" reconcile --store all >"$logs/demo-reconcile.log" 2>&1 || rc=$?
grep -E '^(postgres|mongodb|redis|elasticsearch): ' "$logs/demo-reconcile.log" || true
if [ "$rc" != 0 ]; then
  echo "demo: FAILED: reconcile found drift or could not run (status $rc); report in $logs/demo-reconcile.log" >&2
  exit 1
fi
echo "demo: zero drift in all four stores"
echo "demo: the processors serve /metrics and /health on 127.0.0.1:9464; each sink on the address in its log"
