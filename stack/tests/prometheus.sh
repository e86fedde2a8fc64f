#!/usr/bin/env bash
# The pipeline's metrics, as the real Prometheus sees them, against the running local stack:
#   1. `tributary process --app all`, `tributary sink --store postgres` and `tributary gateway`
#      serve /metrics and /health on ports of this test; a small seeded workload goes through
#      them (one order through the gateway);
#   2. `promtool check metrics` finds no problem in any process's /metrics output, and every
#      series follows the one naming scheme (runtime/src/metrics.rs): `component_kind` and
#      `component_id` on every series, names `tributary_component_*` or `tributary_<kind>_*`;
#   3. Prometheus (Debian's package), scraping both every second, has series, through its query
#      API, for consumer lag, throughput (records in, records written), sink freshness, dead
#      letters (processors and sink) and the saga's outcomes.
# Everything it starts is stopped by pid, and its files live in a temp dir of its own.
# Ports: 29464 (processors), 29465 (sink), 29090 (Prometheus), 29466 (gateway); override with
# PROMTEST_PORTS="a b c d".
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=stack/env.sh
source "$root/stack/env.sh"
bin="$TRIBUTARY_BIN"

read -r p_proc p_sink p_prom p_gw <<<"${PROMTEST_PORTS:-29464 29465 29090 29466}"
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
ports_free() { for p in "$p_proc" "$p_sink" "$p_prom" "$p_gw"; do answers "$p" && { echo "  port $p is taken"; return 1; }; done; return 0; }
check "the test's ports $p_proc $p_sink $p_prom $p_gw are free" ports_free || abort

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
api_key="promtest-key-$(date +%s)-$$-0123456789"
echo "promtest $api_key" >"$tmp/api-keys"
"$bin" gateway --topic-prefix "$prefix" --listen "127.0.0.1:$p_gw" --api-keys-file "$tmp/api-keys" \
  --key-prefix "$prefix" >"$tmp/gateway.log" 2>&1 </dev/null &
gw_pid=$!; started $gw_pid
check "the processors serve /health" serves "$proc_pid" "$p_proc" || abort "$tmp/process.log"
check "the postgres sink serves /health" serves "$sink_pid" "$p_sink" || abort "$tmp/sink.log"
check "the gateway serves /health" serves "$gw_pid" "$p_gw" || abort "$tmp/gateway.log"
gateway_order() {
  local code
  code=$(curl -sS --max-time 10 -o "$tmp/gateway-answer.json" -w '%{http_code}' -X POST \
    -H "x-api-key: $api_key" -H 'content-type: application/json' \
    --data '{"payload": {"PlaceOrder": {"order_id": "o-promtest-'"$$"'", "user_id": "promtest", "currency": "EUR", "lines": [{"product_id": "p-1", "quantity": 1}]}}}' \
    "http://127.0.0.1:$p_gw/commands/commands.orders")
  [ "$code" = 202 ] || { echo "  answered $code: $(cat "$tmp/gateway-answer.json")"; return 1; }
}
check "the gateway accepts an order (202)" gateway_order
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
  - job_name: tributary-gateway
    static_configs: [{ targets: ["127.0.0.1:$p_gw"] }]
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
  "the three targets are up|query|count(up{job=~\"tributary-.*\"} == 1) == 3"
  "consumer lag: tributary_processor_consumer_lag per component/topic/partition|series|tributary_processor_consumer_lag"
  "consumer lag covers the saga's inputs (app tributary-orders)|series|tributary_processor_consumer_lag{component_id=\"${prefix}tributary-orders\"}"
  "throughput: tributary_component_received_records_total > 0|query|sum(tributary_component_received_records_total) > 0"
  "throughput: tributary_component_sent_records_total|series|tributary_component_sent_records_total"
  "throughput: tributary_sink_changes_written_total + stale > 0 (sink postgres)|query|sum(tributary_sink_changes_written_total{component_kind=\"sink\",component_id=\"postgres\"}) + sum(tributary_sink_changes_stale_total{component_kind=\"sink\",component_id=\"postgres\"}) > 0"
  "freshness: tributary_sink_freshness_seconds per view|series|tributary_sink_freshness_seconds{component_kind=\"sink\",component_id=\"postgres\"}"
  "DLQ: tributary_component_dlq_records_total (processors)|series|tributary_component_dlq_records_total{component_kind=\"processor\"}"
  "DLQ: tributary_component_dlq_records_total (sink postgres)|series|tributary_component_dlq_records_total{component_kind=\"sink\",component_id=\"postgres\"}"
  "saga outcomes: tributary_processor_saga_orders_completed_total confirmed|series|tributary_processor_saga_orders_completed_total{outcome=\"confirmed\"}"
  "saga outcomes: tributary_processor_saga_orders_completed_total cancelled by reason|series|tributary_processor_saga_orders_completed_total{outcome=\"cancelled\",reason!=\"\"}"
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
check "promtool check metrics: the gateway's /metrics has no problem" lint "$p_gw" gateway

# The one naming scheme, on what each process serves (runtime/src/metrics.rs `naming_problems`
# checks the same in the crates' tests; this checks the processes as they run).
scheme() { # name of a saved /metrics output, then the component_kind its series must have
  python3 - "$tmp/$1.prom" "$2" <<'PY'
import re, sys
path, kind = sys.argv[1], sys.argv[2]
problems, series = [], 0
for line in open(path):
    if line.startswith("#") or not line.strip():
        continue
    m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ', line)
    if not m:
        problems.append("unparsed: " + line.strip()); continue
    name, labels = m.group(1), dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
    series += 1
    if labels.get("component_kind") != kind:
        problems.append(f"{name}: component_kind is {labels.get('component_kind')!r}, not {kind!r}")
    if not labels.get("component_id"):
        problems.append(f"{name}: no component_id")
    if not (name.startswith("tributary_component_") or name.startswith(f"tributary_{kind}_")):
        problems.append(f"{name}: not tributary_component_* nor tributary_{kind}_*")
    for old in ("app", "sink"):
        if old in labels:
            problems.append(f"{name}: label {old} (component_id says it)")
for p in sorted(set(problems))[:10]:
    print("  " + p)
sys.exit(1 if problems or series == 0 else 0)
PY
}
check "naming scheme: every series of the processors' /metrics" scheme processors processor
check "naming scheme: every series of the sink's /metrics" scheme sink sink
check "naming scheme: every series of the gateway's /metrics" scheme gateway gateway

alive() { for p in "${pids[@]}"; do running "$p" || return 1; done; }
check "every process the test started is still running" alive
if [ "$failed" -gt 0 ]; then
  for f in process sink gateway prometheus; do echo "---- tail of $f.log"; tail -n 15 "$tmp/$f.log"; done
fi

echo "prometheus: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
