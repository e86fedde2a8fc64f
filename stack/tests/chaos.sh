#!/usr/bin/env bash
# Chaos test (`make chaos`; `make test` runs it at CI size): the pipeline's ten long-running
# processes (the six domain apps and the four sinks, each a process of its own) are killed with
# SIGKILL at random while a seeded workload runs, and each is restarted a moment later with the
# same arguments and state dir. Once everything has caught up:
#   - the saga's invariants hold over the log (`tributary summary --invariants`): every order
#     final, stock conserved, captured iff confirmed, refunded iff compensated, one notification
#     per outcome; and every order sent was placed (or rejected);
#   - `tributary reconcile` finds zero drift in each of the four stores.
# Exits 0 when all of that holds, 1 when something does not (the message names it), 2 when the
# run could not be made (binary, stack or tools missing).
#
# Isolation. Everything lives under $TRIBUTARY_RUN_DIR/chaos-<ts>/ (logs/, state/<app>/) and in
# store namespaces of the run's own: PostgreSQL database tributary_chaos_<ts>, MongoDB database
# tributary_chaos_<ts>, Elasticsearch prefix tributary-chaos-<ts>-, Redis logical database
# $CHAOS_REDIS_DB (default 15; the run keeps the default --redis-prefix there and empties that
# database's tributary:* keys first). The topics are isolated one of two ways
# (CHAOS_ISOLATION=auto, the default, picks `prefix` when the binary supports it, else `broker`):
#   prefix  a topic prefix (`--topic-prefix chaos-<ts>.`) on the stack's broker; needs
#           `summary` and `reconcile` to take --topic-prefix as well;
#   broker  a broker of the run's own (the stack's nisshi binary, sqlite storage in the run dir,
#           127.0.0.1:$CHAOS_BROKER_PORT, default 19092) with the stack's schema registry.
# On success the store namespaces, the state dirs and the private broker's data are removed
# (CHAOS_KEEP=1 keeps them); the logs always stay.
#
# Knobs (environment):
#   CHAOS_ORDERS (5000)  orders in the workload        CHAOS_KILLS (20)     kills in all
#   CHAOS_INTERVAL (3)   seconds between kills         CHAOS_RESTART_DELAY (1) seconds dead
#   CHAOS_SAGA_TIMEOUT (30) --saga-timeout-secs        CHAOS_SEED (42)      workload seed
#   CHAOS_KILL_SEED      seed of the kill sequence (default: from the clock; printed)
#   CHAOS_RATE           loadgen commands/s (default: spread the workload over the kill period;
#                        0 = as fast as possible)
#   CHAOS_USERS (500), CHAOS_PRODUCTS (100)  workload shape (loadgen's defaults)
#   CHAOS_WAIT (600)     seconds allowed for catching up    CHAOS_MAX_CRASHES (5) per process
#   CHAOS_ISOLATION, CHAOS_BROKER_PORT, CHAOS_REDIS_DB, CHAOS_KEEP  see above
#   CHAOS_METRICS_BASE   when set, the four sinks serve /metrics on 127.0.0.1:BASE..BASE+3, and
#                        the report gives each sink's event → visible latency (from its
#                        tributary_sink_event_to_visible_seconds histogram, read once caught up)
# The binary is $TRIBUTARY_BIN (default: the release build, else the debug build).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
explicit_bin="${TRIBUTARY_BIN:-}"
# shellcheck source=stack/env.sh
source "$root/stack/env.sh"
bin="${explicit_bin:-$CARGO_TARGET_DIR/release/tributary}"
if [ -z "$explicit_bin" ] && [ ! -x "$bin" ] && [ -x "$CARGO_TARGET_DIR/debug/tributary" ]; then
  bin="$CARGO_TARGET_DIR/debug/tributary"
fi

orders=${CHAOS_ORDERS:-5000}
kills_wanted=${CHAOS_KILLS:-20}
interval=${CHAOS_INTERVAL:-3}
restart_delay=${CHAOS_RESTART_DELAY:-1}
saga_timeout=${CHAOS_SAGA_TIMEOUT:-30}
seed=${CHAOS_SEED:-42}
kill_seed=${CHAOS_KILL_SEED:-$(($(date +%s%N) % 32768))}
users=${CHAOS_USERS:-500}
products=${CHAOS_PRODUCTS:-100}
wait_secs=${CHAOS_WAIT:-600}
max_crashes=${CHAOS_MAX_CRASHES:-5}
isolation=${CHAOS_ISOLATION:-auto}
broker_port=${CHAOS_BROKER_PORT:-19092}
redis_db=${CHAOS_REDIS_DB:-15}
keep=${CHAOS_KEEP:-0}
namespaces="" # the run's store namespaces, once made
for v in orders kills_wanted interval restart_delay saga_timeout seed kill_seed users products \
  wait_secs max_crashes broker_port redis_db; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "chaos: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done

t0_ms=$(date +%s%3N)
ts=$(date -u +%Y%m%d%H%M%S)
run="$TRIBUTARY_RUN_DIR/chaos-$ts"
logs="$run/logs"
mkdir -p "$logs" "$run/state"

say() { printf 'chaos: %s\n' "$*"; }
now_ms() { date +%s%3N; }
secs() { local ms=$1; printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); } # ms -> "12.3"
since_load() { secs $(($(now_ms) - ${load_ms:-$t0_ms})); }
mmss() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
answers() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
host_port() { # URL or host:port -> "host port"
  local s="$1"
  s="${s#*://}"; s="${s%%,*}"; s="${s%%/*}"; s="${s##*@}"
  printf '%s %s\n' "${s%:*}" "${s##*:}"
}
# A child of this script, running and not a zombie (an exited child not yet waited for still
# answers kill -0; the parent check keeps a recycled pid from being taken for ours).
alive() {
  local ppid stat
  read -r ppid stat < <(ps -o ppid=,stat= -p "$1" 2>/dev/null) || return 1
  [ "$ppid" = $$ ] && [[ $stat != Z* ]]
}

failures=()   # one line per broken expectation
relevant=()   # logs whose tail the failure report shows
fail() { failures+=("$1"); shift; relevant+=("$@"); say "FAIL: ${failures[-1]}"; }
tails() {
  local f seen=" "
  for f in "$@"; do
    [[ $seen == *" $f "* ]] && continue
    seen+="$f "
    [ -f "$f" ] || continue
    echo "---- tail of $f"
    tail -n 25 "$f"
  done
}
# The run cannot go on: say why, show the logs, exit (the EXIT trap stops what runs).
abort() { # code message [log...]
  local code=$1 msg=$2; shift 2
  say "ERROR: $msg"
  tails "$@"
  say "logs in $logs${namespaces:+; store namespaces kept: $namespaces}"
  exit "$code"
}

# ---- Everything this script starts, stopped on exit: TERM, then KILL after 20 s.
names=(users inventory payments orders notifications analytics
  sink-postgres sink-mongodb sink-redis sink-elasticsearch)
declare -A pid=() starts=() crashes=()
loadgen_pid="" summary_pid="" reconcile_pid="" broker_pid=""
stop_pids() { # pid...
  local p deadline=$((SECONDS + 20)) live
  for p in "$@"; do [ -n "$p" ] && alive "$p" && kill -TERM "$p" 2>/dev/null; done
  while :; do
    live=0
    for p in "$@"; do [ -n "$p" ] && alive "$p" && live=1; done
    [ $live -eq 0 ] || [ $SECONDS -ge $deadline ] && break
    sleep 0.2
  done
  for p in "$@"; do
    [ -n "$p" ] || continue
    alive "$p" && { say "pid $p ignored TERM for 20 s; killing it"; kill -KILL "$p" 2>/dev/null; }
    wait "$p" 2>/dev/null
  done
}
stop_all() {
  local n list=()
  for n in "${names[@]}"; do list+=("${pid[$n]:-}"); pid[$n]=""; done
  stop_pids "$loadgen_pid" "$summary_pid" "$reconcile_pid" "${list[@]}"
  loadgen_pid="" summary_pid="" reconcile_pid=""
  if [ -n "$broker_pid" ]; then stop_pids "$broker_pid"; broker_pid=""; fi
}
trap stop_all EXIT
trap 'say "interrupted; logs in $logs${namespaces:+; store namespaces kept: $namespaces}"; exit 130' INT TERM HUP

# ---- Preconditions.
[ -x "$bin" ] || abort 2 "no tributary binary at $bin (nor $CARGO_TARGET_DIR/debug/tributary): make build"
for tool in psql redis-cli curl flock; do
  command -v "$tool" >/dev/null || abort 2 "$tool is needed (creating and clearing the run's store namespaces)"
done
exec 9>"$TRIBUTARY_RUN_DIR/chaos.lock"
flock -n 9 || abort 2 "another chaos run holds $TRIBUTARY_RUN_DIR/chaos.lock"
for pair in "broker $TRIBUTARY_KAFKA_BROKERS" "registry $TRIBUTARY_SCHEMA_REGISTRY_URL" \
  "postgres $TRIBUTARY_DATABASE_URL" "mongodb $TRIBUTARY_MONGODB_URL" \
  "redis $TRIBUTARY_REDIS_URL" "elasticsearch $TRIBUTARY_ELASTICSEARCH_URL"; do
  read -r host port < <(host_port "${pair#* }")
  answers "$host" "$port" || abort 2 "${pair%% *} does not answer on $host:$port (bash stack/stack.sh up)"
done

# (grep without -q reads all of the help: with pipefail, an early exit would fail the pipeline.)
supports() { "$bin" "$1" --help 2>/dev/null | grep -- "$2" >/dev/null; }
if [ "$isolation" = auto ]; then
  if supports summary --topic-prefix && supports reconcile --topic-prefix; then isolation=prefix; else isolation=broker; fi
fi
prefix_args=()
case $isolation in
  prefix)
    for sub in summary reconcile; do
      supports "$sub" --topic-prefix || abort 2 "CHAOS_ISOLATION=prefix, but \`tributary $sub\` has no --topic-prefix"
    done
    topic_prefix="chaos-$ts."
    prefix_args=(--topic-prefix "$topic_prefix")
    where="topic prefix $topic_prefix on $TRIBUTARY_KAFKA_BROKERS"
    ;;
  broker)
    nisshi="${NISSHI_BIN:-$(printf '%s\n' "$TRIBUTARY_CACHE"/nisshi-*/bin/nisshi | sort -V | tail -n 1)}"
    [ -x "$nisshi" ] || abort 2 "CHAOS_ISOLATION=broker needs the nisshi binary ($TRIBUTARY_CACHE/nisshi-*/bin/nisshi, built by stack/stack.sh up; or NISSHI_BIN)"
    answers 127.0.0.1 "$broker_port" && abort 2 "port $broker_port (CHAOS_BROKER_PORT) is taken"
    mkdir -p "$run/broker"
    # nisshi reads the path of a sqlite:// URL as relative to its working directory.
    (cd "$run/broker" && exec "$nisshi" broker --listener-url "tcp://127.0.0.1:$broker_port" \
      --advertised-listener-url "tcp://127.0.0.1:$broker_port" --storage-engine "sqlite://log.db" \
      --group-initial-rebalance-delay 0s) >"$logs/broker.log" 2>&1 </dev/null 9>&- &
    broker_pid=$!
    until answers 127.0.0.1 "$broker_port"; do
      alive "$broker_pid" || abort 2 "the run's broker exited while starting" "$logs/broker.log"
      [ $(($(now_ms) - t0_ms)) -lt 60000 ] || abort 2 "the run's broker did not answer within 60 s" "$logs/broker.log"
      sleep 0.2
    done
    export TRIBUTARY_KAFKA_BROKERS="127.0.0.1:$broker_port"
    where="a broker of its own on $TRIBUTARY_KAFKA_BROKERS (pid $broker_pid)"
    ;;
  *) abort 2 "CHAOS_ISOLATION must be auto, prefix or broker, got '$isolation'" ;;
esac

# ---- The run's store namespaces.
pg_base="${TRIBUTARY_DATABASE_URL%%\?*}"
pg_query=""; [[ $TRIBUTARY_DATABASE_URL == *\?* ]] && pg_query="?${TRIBUTARY_DATABASE_URL#*\?}"
pg_db="tributary_chaos_$ts"
mongo_db="tributary_chaos_$ts"
es_prefix="tributary-chaos-$ts-"
namespaces="postgres $pg_db, mongodb $mongo_db, elasticsearch $es_prefix*, redis db $redis_db"
pg_admin="${pg_base%/*}/postgres$pg_query"
export TRIBUTARY_DATABASE_URL="${pg_base%/*}/$pg_db$pg_query"
psql "$pg_admin" -qc "create database \"$pg_db\"" >"$logs/setup.log" 2>&1 ||
  abort 2 "could not create PostgreSQL database $pg_db" "$logs/setup.log"
redis_hostpart="${TRIBUTARY_REDIS_URL#*://}"; redis_hostpart="${redis_hostpart%%/*}"; redis_hostpart="${redis_hostpart%%\?*}"
export TRIBUTARY_REDIS_URL="${TRIBUTARY_REDIS_URL%%://*}://$redis_hostpart/$redis_db"
clear_redis() {
  redis-cli -u "$TRIBUTARY_REDIS_URL" --scan --pattern 'tributary:*' |
    xargs -r -n 500 redis-cli -u "$TRIBUTARY_REDIS_URL" del >/dev/null
}
clear_redis >>"$logs/setup.log" 2>&1 || abort 2 "could not clear tributary:* in $TRIBUTARY_REDIS_URL" "$logs/setup.log"
store_args=(--mongodb-database "$mongo_db" --index-prefix "$es_prefix")

if ! "$bin" topics create "${prefix_args[@]}" >>"$logs/setup.log" 2>&1 ||
  ! "$bin" schemas register --dir "$root/schemas/avro" >>"$logs/setup.log" 2>&1; then
  abort 2 "topics create / schemas register failed" "$logs/setup.log"
fi

say "run $run ($where)"
say "stores: $namespaces"

# ---- The ten processes, each in the background with its own log (appended over restarts).
sink_stores=(postgres mongodb redis elasticsearch)
sink_metrics_port() { # sink-<store> -> its port under CHAOS_METRICS_BASE
  local i
  for i in "${!sink_stores[@]}"; do
    [ "sink-${sink_stores[$i]}" = "$1" ] && echo $((CHAOS_METRICS_BASE + i))
  done
}
sink_metrics_args() { [ -n "${CHAOS_METRICS_BASE:-}" ] && echo "--metrics-listen 127.0.0.1:$(sink_metrics_port "$1")"; }
# "p50 ≤ A s, p99 ≤ B s (N changes)" of a sink's event → visible histogram: the upper bound of
# the bucket each quantile falls in.
visible_latency() { # sink-<store>
  curl -fsS --max-time 5 "http://127.0.0.1:$(sink_metrics_port "$1")/metrics" 2>/dev/null |
    awk '/^tributary_sink_event_to_visible_seconds_bucket/ {
           le = $0; sub(/.*le="/, "", le); sub(/".*/, "", le); n++; b[n] = le; c[n] = $NF }
         /^tributary_sink_event_to_visible_seconds_count/ { total = $NF }
         END {
           if (total == 0) { print "no changes"; exit }
           for (q = 1; q <= 2; q++) {
             want = (q == 1 ? 0.5 : 0.99) * total
             for (i = 1; i <= n; i++) if (c[i] >= want) { v[q] = b[i]; break }
           }
           printf "p50 <= %ss, p99 <= %ss (%d changes)\n", v[1], v[2], total
         }'
}
start_proc() { # name [why]
  local n=$1 why=${2:-start} cmd
  case $n in
    sink-postgres | sink-redis) cmd=("$bin" sink --store "${n#sink-}" "${prefix_args[@]}" $(sink_metrics_args "$n")) ;;
    sink-mongodb) cmd=("$bin" sink --store mongodb --mongodb-database "$mongo_db" "${prefix_args[@]}" $(sink_metrics_args "$n")) ;;
    sink-elasticsearch) cmd=("$bin" sink --store elasticsearch --index-prefix "$es_prefix" "${prefix_args[@]}" $(sink_metrics_args "$n")) ;;
    *) cmd=("$bin" process --app "$n" --state-dir "$run/state/$n" --saga-timeout-secs "$saga_timeout" "${prefix_args[@]}" ${CHAOS_PROCESS_ARGS:-}) ;;
  esac
  starts[$n]=$((${starts[$n]:-0} + 1))
  printf '==== chaos: %s #%d at +%ss: %s\n' "$why" "${starts[$n]}" "$(since_load)" "${cmd[*]}" >>"$logs/$n.log"
  "${cmd[@]}" >>"$logs/$n.log" 2>&1 </dev/null 9>&- &
  pid[$n]=$!
}

crash_log=()
# Restarts every process that exited without being killed by this script, and reports it.
supervise() {
  local n p rc
  for n in "${names[@]}"; do
    p=${pid[$n]:-}
    [ -n "$p" ] || continue
    alive "$p" && continue
    wait "$p" 2>/dev/null; rc=$?
    crashes[$n]=$((${crashes[$n]:-0} + 1))
    crash_log+=("+$(since_load)s $n (status $rc)")
    say "+$(since_load)s $n (pid $p) exited on its own with status $rc; restarting it"
    relevant+=("$logs/$n.log")
    if [ "${crashes[$n]}" -gt "$max_crashes" ]; then
      pid[$n]=""
      fail "$n exited on its own ${crashes[$n]} times (more than CHAOS_MAX_CRASHES=$max_crashes); not restarted" "$logs/$n.log"
      continue
    fi
    start_proc "$n" "restart after exiting on its own (status $rc)"
  done
}
# Sleeps until epoch-ms $1, supervising every second; returns early when pid $2 (if given) ends.
tick_until() { # epoch-ms [pid]
  local left
  while :; do
    supervise
    [ -n "${2:-}" ] && ! alive "$2" && return 0
    left=$(($1 - $(now_ms)))
    [ $left -gt 0 ] || return 0
    if [ $left -ge 1000 ]; then sleep 1; else sleep "0.$(printf '%03d' $left)"; fi
  done
}
tick() { tick_until $(($(now_ms) + $1 * 1000)) "${2:-}"; } # seconds [pid]

for n in "${names[@]}"; do start_proc "$n"; done
sleep 3
for n in "${names[@]}"; do
  alive "${pid[$n]}" || abort 1 "$n exited right after starting (wrong arguments, or a store is unreachable)" "$logs/$n.log"
done
say "ten processes running: ${names[*]}"

# ---- The workload, paced to last about as long as the kills unless CHAOS_RATE says otherwise.
commands=$((users + products + orders))
if [ -n "${CHAOS_RATE:-}" ]; then rate=$CHAOS_RATE; else
  span=$((kills_wanted * interval))
  rate=$((span > 0 ? commands / span : 0))
  [ "$span" -gt 0 ] && [ "$rate" -lt 10 ] && rate=10
fi
rate_args=() rate_text="as fast as possible"
if [ "$rate" != 0 ]; then rate_args=(--rate "$rate"); rate_text="$rate commands/s"; fi
load_ms=$(now_ms)
"$bin" loadgen "${prefix_args[@]}" --seed "$seed" --users "$users" --products "$products" \
  --orders "$orders" --id-prefix "chaos$ts-" "${rate_args[@]}" >"$logs/loadgen.log" 2>&1 </dev/null 9>&- &
loadgen_pid=$!
say "loadgen: seed $seed, $orders orders ($commands commands), $rate_text; saga timeout ${saga_timeout}s"
say "$kills_wanted kills, one every ${interval}s (kill seed $kill_seed)"

# ---- The kills.
RANDOM=$kill_seed
kill_log=()
loadgen_rc=""
reap_loadgen() {
  if [ -n "$loadgen_pid" ] && ! alive "$loadgen_pid"; then
    wait "$loadgen_pid" 2>/dev/null; loadgen_rc=$?
    loadgen_pid=""
    say "+$(since_load)s loadgen finished (status $loadgen_rc)"
  fi
}
# Kill k is due at +k*interval seconds from the workload's start (the restarts' delay included).
while [ ${#kill_log[@]} -lt "$kills_wanted" ]; do
  tick_until $((load_ms + (${#kill_log[@]} + 1) * interval * 1000))
  reap_loadgen
  [ -n "$loadgen_rc" ] && [ "$loadgen_rc" != 0 ] && abort 1 "loadgen failed (status $loadgen_rc)" "$logs/loadgen.log"
  n=${names[RANDOM % ${#names[@]}]}
  alive "${pid[$n]:-0}" || supervise # exited on its own just now: reported and restarted first
  p=${pid[$n]:-}
  [ -n "$p" ] || { kill_log+=("+$(since_load)s $n (skipped: given up on)"); continue; }
  at=$(since_load)
  kill -KILL "$p" 2>/dev/null
  wait "$p" 2>/dev/null
  kill_log+=("+${at}s $n")
  sleep "$restart_delay"
  start_proc "$n" "restart after kill -9 at +${at}s"
  say "+${at}s kill -9 $n (pid $p); restarted as pid ${pid[$n]} (${#kill_log[@]}/$kills_wanted)"
done
while [ -n "$loadgen_pid" ]; do tick 5 "$loadgen_pid"; reap_loadgen; done
[ "$loadgen_rc" = 0 ] || abort 1 "loadgen failed (status $loadgen_rc)" "$logs/loadgen.log"
chaos_end_ms=$(now_ms)
sent=$(sed -n 's/^ *PlaceOrder *\([0-9][0-9]*\)$/\1/p' "$logs/loadgen.log" | tail -n 1)
say "chaos over at +$(since_load)s: ${#kill_log[@]} kills, ${#crash_log[@]} exits on their own; loadgen: $(grep -m1 "^sent " "$logs/loadgen.log")"

# ---- Catch up, then check. `summary` runs in the background so that the processes stay
# supervised while it waits.
summary() { # label extra-args...: runs `tributary summary`; its status in $summary_rc
  local label=$1; shift
  "$bin" summary "${prefix_args[@]}" "${store_args[@]}" --since-ms "$load_ms" "$@" \
    >"$logs/summary-$label.out" 2>"$logs/summary-$label.err" </dev/null 9>&- &
  summary_pid=$!
  while alive "$summary_pid"; do tick 2 "$summary_pid"; done
  wait "$summary_pid" 2>/dev/null; summary_rc=$?
  summary_pid=""
}
behind() { grep -q 'still .* records behind' "$logs/summary-$1.err"; }
violations() { sed -n 's/^    \([a-z-]*\): .*/\1/p' "$logs/summary-$1.out" | sort | uniq -c | awk '{printf "%s%s (%d shown)", sep, $2, $1; sep=", "}'; }
describe() { # invariant name -> what it means
  case $1 in
    order-final) echo "every order final (exactly one outcome)" ;;
    stock-conserved) echo "stock conserved" ;;
    captured-iff-confirmed) echo "charged iff confirmed" ;;
    refunded-iff-compensated) echo "refunded iff compensated" ;;
    one-notification-per-outcome) echo "one notification per outcome" ;;
    *) echo "$1" ;;
  esac
}

say "waiting for every processor and sink to catch up (up to ${wait_secs}s)"
catch_ms=$(now_ms)
summary first --wait "$wait_secs" --invariants
final=first
if [ "$summary_rc" != 0 ] && ! behind first; then
  # Caught up, yet something is off: an order may still wait for its saga timer (set when the
  # saga saw the order, which can be long after loadgen sent it). Give every timer time to fire,
  # let its effects flow through, and judge on the second look.
  say "caught up, but: $(violations first | cut -c1-200); giving the saga timers ${saga_timeout}s + 5s, then looking again"
  tick $((saga_timeout + 5))
  summary second --wait "$wait_secs" --invariants
  final=second
fi
catch_s=$((($(now_ms) - catch_ms) / 1000))
out="$logs/summary-$final.out"
visible=()
if [ -n "${CHAOS_METRICS_BASE:-}" ]; then
  for s in "${sink_stores[@]}"; do visible+=("$s $(visible_latency "sink-$s")"); done
fi
caught_up=1
if behind "$final"; then
  caught_up=0
  lagging=("$logs/summary-$final.err")
  for n in "${names[@]}"; do lagging+=("$logs/$n.log"); done
  fail "the pipeline did not catch up within ${wait_secs}s: $(tail -n 1 "$logs/summary-$final.err")" "${lagging[@]}"
elif grep -q 'unavailable:' "$out"; then
  fail "summary could not read every store: $(grep 'unavailable:' "$out" | head -n 3 | tr -s ' ' | tr '\n' ';')" "$out"
elif [ "$summary_rc" -ge 2 ]; then
  fail "summary failed (status $summary_rc): $(tail -n 1 "$logs/summary-$final.err")" "$logs/summary-$final.err"
fi
if grep -q 'violations; the first:' "$out"; then
  n_viol=$(sed -n 's/^  \([0-9]*\) violations; the first:.*/\1/p' "$out")
  broken=""
  while read -r inv; do broken+="${broken:+, }$inv ($(describe "$inv"))"; done \
    < <(sed -n 's/^    \([a-z-]*\): .*/\1/p' "$out" | sort -u)
  fail "invariants broken: $n_viol violations; among the first shown: $broken" \
    "$out" "$logs/orders.log" "$logs/inventory.log" "$logs/payments.log" "$logs/notifications.log"
elif [ $caught_up = 1 ] && ! grep -q ': hold$' "$out"; then
  fail "summary printed no invariants verdict (see $out)" "$out" "$logs/summary-$final.err"
fi
placed=$(sed -n 's/^  placed  *\([0-9][0-9]*\)$/\1/p' "$out")
rejected=$(sed -n 's/^  [^ ]*events\.rejections  *\([0-9][0-9]*\) .*/\1/p' "$out"); rejected=${rejected:-0}
if [ -n "$sent" ] && [ -n "$placed" ] && [ $((placed + rejected)) -lt "$sent" ]; then
  fail "orders lost: loadgen sent $sent PlaceOrder, but only $placed were placed ($rejected rejections in all)" \
    "$out" "$logs/orders.log"
fi

# ---- Reconcile every store; a store that drifts is looked at again once the pipeline is quiet.
declare -A drift=() drift_first=()
reconcile_store() { # store label -> drift count in $r_drift ("" when the run failed)
  local s=$1 label=$2 f="$logs/reconcile-$1-$2.log"
  # In the background so that a TERM or Ctrl-C stops the run at once (`wait` is interruptible).
  "$bin" reconcile --store "$s" "${prefix_args[@]}" "${store_args[@]}" >"$f" 2>&1 </dev/null 9>&- &
  reconcile_pid=$!
  wait "$reconcile_pid"; r_rc=$?
  reconcile_pid=""
  r_drift=$(sed -n "s/^$s: [0-9]* records replayed ([0-9]* skipped), \([0-9]*\) entities drifted$/\1/p" "$f" | head -n 1)
}
rec_ms=$(now_ms)
if [ $caught_up = 1 ]; then
  for s in postgres mongodb redis elasticsearch; do
    reconcile_store "$s" first
    drift_first[$s]=$r_drift
    if [ "$r_rc" = 1 ] && [ -n "$r_drift" ] && [ "$r_drift" -gt 0 ]; then
      say "$s: $r_drift entities drifted; catching up once more and reconciling again"
      summary "quiet-$s" --wait 120
      reconcile_store "$s" second
    fi
    drift[$s]=${r_drift:-error}
    f="$logs/reconcile-$s-$([ -f "$logs/reconcile-$s-second.log" ] && echo second || echo first).log"
    if [ -z "$r_drift" ] || [ "$r_rc" -ge 2 ]; then
      fail "reconcile $s failed (status $r_rc): $(grep -m1 '^error' "$f" || tail -n 1 "$f")" "$f" "$logs/sink-$s.log"
    elif [ "$r_drift" -gt 0 ]; then
      fail "reconcile $s: $r_drift entities drifted:$(sed -n '2,/^$/p' "$f" | sed '/^$/d' | head -n 8 | tr -s ' ' | tr '\n' ';')" "$f" "$logs/sink-$s.log"
    fi
  done
fi
rec_s=$((($(now_ms) - rec_ms) / 1000))

# ---- The report.
total_s=$((($(now_ms) - t0_ms) / 1000))
echo
echo "chaos summary ($run)"
echo "  isolation   $where"
echo "  workload    seed $seed, $orders orders, $commands commands, $rate_text, saga timeout ${saga_timeout}s; ${sent:-?} PlaceOrder sent, ${placed:-?} placed, $rejected rejections"
echo "  kills       ${#kill_log[@]} (kill seed $kill_seed, every ${interval}s, restarted after ${restart_delay}s):"
for ((i = 0; i < ${#kill_log[@]}; i += 5)); do
  printf '             %s\n' "$(printf ' %-26s' "${kill_log[@]:i:5}" | sed 's/ *$//')"
done
if [ ${#crash_log[@]} -gt 0 ]; then
  echo "  exited on their own (restarted) ${#crash_log[@]}:"
  printf '              %s\n' "${crash_log[@]}"
else
  echo "  exited on their own: none"
fi
echo "  outcomes    (from $out)"
sed -n '/^orders$/,/^invariants$/p' "$out" | sed '1d;$d' | sed 's/^/            /'
echo "  invariants  $(sed -n '/^invariants$/,$p' "$out" | sed -n '2p' | sed 's/^ *//')"
echo "  latency    $(sed -n 's/^ *placed → outcome latency *//p' "$out" | head -n 1)"
for v in "${visible[@]}"; do echo "  visible     $v"; done
sed -n '/^invariants$/,$p' "$out" | sed -n '3,7p' | sed 's/^ */              /'
line="  drift      "
for s in postgres mongodb redis elasticsearch; do
  d=${drift[$s]:-not checked}
  [ -n "${drift_first[$s]:-}" ] && [ "${drift_first[$s]}" != "$d" ] && d="$d (first pass ${drift_first[$s]})"
  line+=" $s $d;"
done
echo "${line%;}"
echo "  elapsed     $(mmss "$total_s") in all: chaos $(mmss $(((chaos_end_ms - load_ms) / 1000))), catching up and invariants $(mmss "$catch_s"), reconcile $(mmss "$rec_s")"

if [ ${#failures[@]} -gt 0 ]; then
  echo
  say "FAILED (${#failures[@]}):"
  printf '  - %s\n' "${failures[@]}"
  tails "${relevant[@]}"
  say "logs in $logs; store namespaces kept: $namespaces"
  exit 1
fi

# ---- Passed: stop everything, then drop what the run made (best effort; logs stay).
stop_all
if [ "$keep" != 1 ]; then
  psql "$pg_admin" -qc "drop database if exists \"$pg_db\"" >>"$logs/cleanup.log" 2>&1 ||
    say "note: could not drop PostgreSQL database $pg_db (see $logs/cleanup.log)"
  clear_redis >>"$logs/cleanup.log" 2>&1 || say "note: could not clear redis db $redis_db"
  es="${TRIBUTARY_ELASTICSEARCH_URL%/}"
  for idx in $(curl -fsS "$es/_cat/indices?h=index" 2>>"$logs/cleanup.log" | grep "^$es_prefix"); do
    curl -fsS -X DELETE "$es/$idx" >>"$logs/cleanup.log" 2>&1 || say "note: could not delete index $idx"
  done
  if [ -x "$TRIBUTARY_PYTHON" ]; then
    "$TRIBUTARY_PYTHON" -c 'import sys, pymongo; pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000).drop_database(sys.argv[2])' \
      "$TRIBUTARY_MONGODB_URL" "$mongo_db" >>"$logs/cleanup.log" 2>&1 || say "note: could not drop MongoDB database $mongo_db"
  fi
  rm -rf "$run/state" "$run/broker"
fi
say "PASSED in $(mmss "$total_s"): ${#kill_log[@]} kills, invariants hold, zero drift in all four stores (logs in $logs)"
