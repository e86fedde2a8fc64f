#!/usr/bin/env bash
# The saga benchmark (`make bench`, section "saga"): the whole pipeline — six domain apps and
# four sinks as separate release processes on a broker of their own (stack/tests/chaos.sh with
# no kills) — under a seeded workload offered at each rate of SAGA_RATES (loadgen commands/s;
# about 0.9 of them are PlaceOrder). Prints, per rate, the placed→outcome latency percentiles,
# the orders settled per second, the timeouts, and the check that every invariant held and no
# store drifted, and each sink's event → visible latency (its histogram, read once caught up).
# SAGA_ORDERS (default 5000) orders per rate. Each rate runs on a fresh broker of its own (the
# stack's nisshi binary and storage, as `make up` runs it), so that earlier runs' compacted
# topics cost nothing; SAGA_ISOLATION=prefix runs on the stack's broker instead.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=stack/env.sh
source "$here/env.sh"
rates=${SAGA_RATES:-280 700}
orders=${SAGA_ORDERS:-5000}
printf 'saga bench: %s orders per rate, rates %s commands/s, %s\n' "$orders" "$rates" "$(nproc) cores"
for rate in $rates; do
  log=$(mktemp)
  if ! CHAOS_KILLS=0 CHAOS_ORDERS=$orders CHAOS_RATE=$rate CHAOS_ISOLATION=${SAGA_ISOLATION:-broker} \
    CHAOS_METRICS_BASE=${CHAOS_METRICS_BASE:-19500} bash "$here/tests/chaos.sh" >"$log" 2>&1; then
    echo "rate $rate: FAILED (log $log)"; tail -n 20 "$log"; exit 1
  fi
  lat=$(sed -n 's/^  latency *//p' "$log")
  timeouts=$(sed -n 's/^ *cancelled (Timeout) *\([0-9]*\)$/\1/p' "$log"); timeouts=${timeouts:-0}
  sent=$(sed -n 's/.*loadgen: sent \(.*\)$/\1/p' "$log")
  echo "offered $rate commands/s (loadgen: $sent): $lat; timeouts $timeouts; invariants hold, zero drift"
  # Where an order's time goes (the summary's stages, each a few hops).
  sed -n 's/^ *\(placed → stock answer\|stock → payment answer\|payment answer → outcome\) */  stage \1: /p' "$log"
  sed -n 's/^  visible  *\(.*\)$/  event -> visible in \1/p' "$log"
  rm -f "$log"
done
