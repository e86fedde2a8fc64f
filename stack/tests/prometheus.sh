#!/usr/bin/env bash
# The pipeline's metrics, as the real Prometheus sees them, against the running local stack:
#   1. `tributary process --app all` and `tributary sink --store postgres` serve /metrics and
#      /health on ports of this test; a small seeded workload goes through them;
#   2. `promtool check metrics` finds no problem in either /metrics output;
#   3. Prometheus (Debian's package), scraping both every second, has series, through its query
#      API, for consumer lag, throughput (records in, records written), sink freshness, dead
#      letters (processors and sink) and the saga's outcomes.
# Everything it starts is stopped by pid, and its files live in a temp dir of its own.
# Ports: 29464 (processors), 29465 (sink), 29090 (Prometheus); override with PROMTEST_PORTS="a b c".
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=stack/env.sh
source "$root/stack/env.sh"
bin="$TRIBUTARY_BIN"

read -r p_proc p_sink p_prom <<<"${PROMTEST_PORTS:-29464 29465 29090}"
tmp="$(mktemp -d /tmp/tributary-prometheus.XXXXXX)"
prom="http://127.0.0.1:$p_prom"
deadline_secs=45 # for the series to appear, from the moment Prometheus is ready

passed=0 failed=0
check() { # description, then a command that must succeed
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $what"; else failed=$((failed + 1)); echo "FAIL $what"; return 1; fi
}
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$1/health" 2>/dev/null | grep -q '"ok"'; }
wait_for() { # seconds, then a command; true once the command succeeds
  local until=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -lt $until ] || return 1; sleep 0.5; done
}

# Running and not a zombie (a child that exited but was not waited for still answers kill -0).
running() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $s != Z* ]]; }
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do
    # A Kafka client's shutdown can take a while; it is bounded here, then forced.
    wait_for 15 eval "! running $p" || kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
started() { pids+=("$1"); }
serves() { # pid port: /health answers; gives up as soon as the process has exited
  local until=$((SECONDS + 30))
  until healthy "$2"; do
    running "$1" && [ $SECONDS -lt $until ] || return 1
    sleep 0.5
  done
}
abort() { # [log]: the run cannot go on
  [ -n "${1:-}" ] && { echo "---- tail of $1"; tail -n 20 "$1"; }
  echo "prometheus: $passed passed, $failed failed (stopped early)"
  exit 1
}

# Preconditions: the binary, Prometheus, the stack, free ports.
check "the tributary binary is built ($bin)" test -x "$bin" || abort
check "prometheus and promtool are installed (stack/stack.sh up)" \
  bash -c 'command -v prometheus >/dev/null && command -v promtool >/dev/null' || abort
stack_up() { answers "${TRIBUTARY_KAFKA_BROKERS##*:}" && answers "${TRIBUTARY_SCHEMA_REGISTRY_URL##*:}"; }
check "the local stack answers (make up)" stack_up || abort
ports_free() { for p in "$p_proc" "$p_sink" "$p_prom"; do answers "$p" && { echo "  port $p is taken"; return 1; }; done; return 0; }
check "the test's ports $p_proc $p_sink $p_prom are free" ports_free || abort

# A pipeline of the test's own (topics, consumer groups, application ids, changelogs), so that what
# other runs left on the broker (a demo's state, say) neither slows nor changes this one.
prefix="promtest-$(date +%s)-$$."
"$bin" topics create --topic-prefix "$prefix" >"$tmp/setup.log" 2>&1 &&
  "$bin" schemas register --dir "$root/schemas/avro" >>"$tmp/setup.log" 2>&1 ||
  { failed=$((failed + 1)); echo "FAIL topics create / schemas register"; abort "$tmp/setup.log"; }

# 1. The processes, then the workload.
"$bin" process --app all --topic-prefix "$prefix" --state-dir "$tmp/state" --metrics-listen "127.0.0.1:$p_proc" \
  >"$tmp/process.log" 2>&1 </dev/null &
proc_pid=$!; started $proc_pid
"$bin" sink --store postgres --topic-prefix "$prefix" --metrics-listen "127.0.0.1:$p_sink" >"$tmp/sink.log" 2>&1 </dev/null &
sink_pid=$!; started $sink_pid
check "the processors serve /health" serves "$proc_pid" "$p_proc" || abort "$tmp/process.log"
check "the postgres sink serves /health" serves "$sink_pid" "$p_sink" || abort "$tmp/sink.log"
check "loadgen sends a seeded workload (200 orders)" \
  bash -c "'$bin' loadgen --topic-prefix '$prefix' --seed 7 --users 50 --products 20 --orders 200 >'$tmp/loadgen.log' 2>&1" ||
  abort "$tmp/loadgen.log"
# The seeded workload's ids are the same on every run, so a rerun only repeats what the views hold
# already; one user of this run's own makes sure the sink writes (and sets its freshness) each time.
user="user-promtest-$(date +%s)-$$"
check "a user of this run's own is registered ($user)" \
  bash -c "'$bin' produce --topic-prefix '$prefix' commands.users '{\"payload\": {\"RegisterUser\": {\"user_id\": \"$user\",
    \"email\": \"$user@example.com\", \"display_name\": \"Prometheus test\", \"locale\": null}}}' >>'$tmp/loadgen.log' 2>&1" ||
  abort "$tmp/loadgen.log"

# 3. Prometheus, scraping both every second.
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: tributary-processors
    static_configs: [{ targets: ["127.0.0.1:$p_proc"] }]
  - job_name: tributary-sinks
    static_configs: [{ targets: ["127.0.0.1:$p_sink"] }]
EOF
check "promtool check config accepts the generated config" \
  bash -c "promtool check config '$tmp/prometheus.yml' >/dev/null 2>&1"
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
  --web.listen-address="127.0.0.1:$p_prom" --log.level=warn >"$tmp/prometheus.log" 2>&1 </dev/null &
started $!
prom_ready() { curl -fsS --max-time 2 "$prom/-/ready" >/dev/null 2>&1; }
check "prometheus is ready" wait_for 30 prom_ready || abort "$tmp/prometheus.log"

# Number of results of an instant query / of series matching a selector (0 on any error).
count_of() { # api (query|series), expression
  local param=query; [ "$1" = series ] && param='match[]'
  curl -fsS --max-time 3 -G "$prom/api/v1/$1" --data-urlencode "$param=$2" 2>/dev/null |
    python3 -c 'import json, sys
try:
    r = json.load(sys.stdin)
    print(len(r["data"]["result"] if isinstance(r["data"], dict) else r["data"]) if r.get("status") == "success" else 0)
except Exception:
    print(0)'
}
has() { [ "$(count_of "$1" "$2")" -gt 0 ]; }

# What must exist: [description]=query (a selector for /api/v1/series, an expression for /api/v1/query).
declare -a what=(
  "both targets are up|query|count(up{job=~\"tributary-.*\"} == 1) == 2"
  "consumer lag: tributary_streams_consumer_lag per app/topic/partition|series|tributary_streams_consumer_lag"
  "consumer lag covers the saga's inputs (app tributary-orders)|series|tributary_streams_consumer_lag{app=\"${prefix}tributary-orders\"}"
  "throughput: tributary_streams_records_in_total > 0|query|sum(tributary_streams_records_in_total) > 0"
  "throughput: tributary_streams_records_out_total|series|tributary_streams_records_out_total"
  "throughput: tributary_sink_records_written_total + stale > 0 (sink postgres)|query|sum(tributary_sink_records_written_total{sink=\"postgres\"}) + sum(tributary_sink_records_stale_total{sink=\"postgres\"}) > 0"
  "freshness: tributary_sink_freshness_seconds per view|series|tributary_sink_freshness_seconds{sink=\"postgres\"}"
  "DLQ: tributary_streams_dlq_records_total|series|tributary_streams_dlq_records_total"
  "DLQ: tributary_sink_dlq_records_total (sink postgres)|series|tributary_sink_dlq_records_total{sink=\"postgres\"}"
  "saga outcomes: tributary_saga_orders_completed_total confirmed|series|tributary_saga_orders_completed_total{outcome=\"confirmed\"}"
  "saga outcomes: tributary_saga_orders_completed_total cancelled by reason|series|tributary_saga_orders_completed_total{outcome=\"cancelled\",reason!=\"\"}"
)
all_there() {
  local w rest
  for w in "${what[@]}"; do rest=${w#*|}; has "${rest%%|*}" "${rest#*|}" || return 1; done
}
wait_for "$deadline_secs" all_there
for w in "${what[@]}"; do
  rest=${w#*|}
  check "prometheus has ${w%%|*}" has "${rest%%|*}" "${rest#*|}"
done

# 2. promtool's lint of each /metrics output, now that every family has values.
lint() { # port, name
  curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" >"$tmp/$2.prom" || { echo "  GET /metrics failed"; return 1; }
  local out; out=$(promtool check metrics <"$tmp/$2.prom" 2>&1); local rc=$?
  [ -n "$out" ] && sed 's/^/  /' <<<"$out"
  [ $rc -eq 0 ] && [ -z "$out" ]
}
check "promtool check metrics: the processors' /metrics has no problem" lint "$p_proc" processors
check "promtool check metrics: the sink's /metrics has no problem" lint "$p_sink" sink

alive() { for p in "${pids[@]}"; do running "$p" || return 1; done; }
check "every process the test started is still running" alive
if [ "$failed" -gt 0 ]; then
  for f in process sink prometheus; do echo "---- tail of $f.log"; tail -n 15 "$tmp/$f.log"; done
fi

echo "prometheus: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
