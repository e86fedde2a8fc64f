#!/usr/bin/env bash
# The streams runtime bench (`make bench`, section "streams"): on a broker of its own, its sqlite
# log in memory (/dev/shm; the stack's broker is built without nisshi's memory engine, which
# needs its `dynostore` feature), so that the broker is less of the bound; in one run and on one
# input topic:
#   raw      one consumer and one producer, consume -> produce, no state (the ceiling);
#   runtime  the stateful word count on tributary-streams (release build);
#   quix     the same stateful word count on Quix Streams (PyPI `quixstreams`, in a bench-only
#            venv under $TRIBUTARY_CACHE/bench-venv, installed on first use).
# BENCH_RECORDS (default 300000) keyed records over 1 000 keys on 3 partitions.
# BENCH_BROKER_PORT (default 19094) is the port of the run's broker; it is stopped at the end.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=stack/env.sh
source "$here/env.sh"

records=${BENCH_RECORDS:-300000}
port=${BENCH_BROKER_PORT:-19094}
quix_version=3.28.1
venv="$TRIBUTARY_CACHE/bench-venv"
nisshi="${NISSHI_BIN:-$(printf '%s\n' "$TRIBUTARY_CACHE"/nisshi-*/bin/nisshi | sort -V | tail -n 1)}"
[ -x "$nisshi" ] || { echo "bench-streams: no broker binary under $TRIBUTARY_CACHE (run make up first)" >&2; exit 2; }

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
answers "$port" && { echo "bench-streams: port $port (BENCH_BROKER_PORT) is taken" >&2; exit 2; }

if ! "$venv/bin/python" -c "import quixstreams" 2>/dev/null; then
  echo "bench-streams: installing quixstreams==$quix_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "quixstreams==$quix_version"
fi

run=$(mktemp -d)
log_dir=$(mktemp -d "${BENCH_LOG_DIR:-/dev/shm}/bench-streams-XXXXXX")
# nisshi reads the path of a sqlite:// URL as relative to its working directory.
(cd "$log_dir" && exec "$nisshi" broker --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine "sqlite://log.db" \
  --group-initial-rebalance-delay 0s) >"$run/broker.log" 2>&1 </dev/null &
broker=$!
trap 'kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null; rm -rf "$run" "$log_dir"' EXIT
for _ in $(seq 1 300); do answers "$port" && break; sleep 0.2; done
answers "$port" || { echo "bench-streams: the broker did not start; see its log:" >&2; cat "$run/broker.log" >&2; exit 2; }
brokers="127.0.0.1:$port"

echo "streams bench: $records records, 1000 keys, 3 partitions, nisshi (sqlite in $log_dir) on $brokers, $(nproc) cores"
(cd "$root" && TRIBUTARY_KAFKA_BROKERS=$brokers BENCH_RECORDS=$records BENCH_KEEP_INPUT=1 \
  cargo run -q --release -p tributary-streams --example bench) | tee "$run/rust.out"
input=$(sed -n 's/^input topic: //p' "$run/rust.out")
runtime=$(sed -n 's/^stateful word count: .*, \([0-9]*\) records\/s$/\1/p' "$run/rust.out")
"$venv/bin/python" "$here/bench-quix.py" "$brokers" "$input" "$records" | tee "$run/quix.out"
quix=$(sed -n 's/^quix: .*, \([0-9]*\) records\/s$/\1/p' "$run/quix.out")
if [ -n "$runtime" ] && [ -n "$quix" ] && [ "$quix" -gt 0 ]; then
  awk -v r="$runtime" -v q="$quix" 'BEGIN { printf "ratio runtime/quix: %.1fx\n", r / q }'
fi
