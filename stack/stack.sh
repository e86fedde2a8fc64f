#!/usr/bin/env bash
# The local stack, without docker: `stack.sh up|down|status`.
#
# up     installs what is missing (each step skips itself when its result is already there), then
#        starts on loopback: the Kafka broker (nisshi, durable sqlite storage), the schema registry
#        (`tributary registry`), MongoDB (SecantusDB) and Elasticsearch (noida-db); checks that
#        PostgreSQL and Redis answer, starting them when installed but stopped, and creates the
#        project's PostgreSQL database. A second `up` starts nothing.
# down   stops exactly what `up` started, by the pids it wrote under $TRIBUTARY_RUN_DIR/pids.
# status one line per service: who started it, its pid, whether its port answers.
#
# Addresses, ports and folders come from stack/env.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=stack/env.sh
source "$here/env.sh"

NISSHI_VERSION=0.8.1
NISSHI_ROOT="$TRIBUTARY_CACHE/nisshi-$NISSHI_VERSION"
NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"
VENV="$TRIBUTARY_CACHE/venv"
PIDS="$TRIBUTARY_RUN_DIR/pids"
LOGS="$TRIBUTARY_RUN_DIR/logs"
DATA="$TRIBUTARY_RUN_DIR/data"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# host:port out of a URL or a broker list (first entry): "postgres://u@h:5432/db" -> "h 5432".
host_port() {
  local s="$1"
  s="${s#*://}"; s="${s%%,*}"; s="${s%%/*}"; s="${s##*@}"
  printf '%s %s\n' "${s%:*}" "${s##*:}"
}

answers() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_port() { # name host port seconds [pidfile]
  local name=$1 host=$2 port=$3 secs=$4 pidfile=${5:-}
  local deadline=$((SECONDS + secs))
  until answers "$host" "$port"; do
    if [ -n "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      die "$name exited while starting; see $LOGS/$name.log:
$(tail -n 20 "$LOGS/$name.log" 2>/dev/null)"
    fi
    [ $SECONDS -lt $deadline ] || die "$name did not answer on $host:$port within ${secs}s; see $LOGS/$name.log"
    sleep 0.2
  done
}

running() { # name -> true when our pid file names a live process
  local f="$PIDS/$1.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# Starts `name` in its own session (so `down` can end it and its children as a group) unless it
# runs already or something else answers on its port.
launch() { # name host port ready_secs -- command...
  local name=$1 host=$2 port=$3 secs=$4; shift 5
  if running "$name"; then
    log "$name: already running (pid $(cat "$PIDS/$name.pid"))"; return 0
  fi
  if answers "$host" "$port"; then
    log "$name: $host:$port already answers (not started by this stack; left alone)"; return 0
  fi
  mkdir -p "$PIDS" "$LOGS"
  setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! >"$PIDS/$name.pid"
  wait_port "$name" "$host" "$port" "$secs" "$PIDS/$name.pid"
  log "$name: started on $host:$port (pid $(cat "$PIDS/$name.pid"))"
}

# ---- Install steps. The broker build, the venv and the Prometheus package run in the background
# while cargo builds the tributary binary in the foreground (its own progress on the terminal); a
# line every 30 s tells what each background step is doing. Each step skips itself when its result
# is already there, writes its output to a log under $TRIBUTARY_CACHE/logs, and a failed step stops
# `up` with its log's path and tail.
STEPS="$TRIBUTARY_RUN_DIR/steps" # one file per background step: "pid start_epoch log"
BUILD_LOGS="$TRIBUTARY_CACHE/logs"

elapsed() { local s=$1; printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# Prints one line, clearing a progress bar cargo may have drawn on the same terminal line.
say() { if [ -t 2 ]; then printf '\r\033[K[stack] %s\n' "$*" >&2; else log "$*"; fi; }

step_begin() { # name pid start_epoch log
  mkdir -p "$STEPS"
  printf '%s %s %s\n' "$2" "$3" "$4" >"$STEPS/$1"
}

# What a running step is doing, from its log.
step_progress() { # name log
  local name=$1 logf=$2 last
  if [ "$name" = nisshi ]; then
    local n
    n=$(grep -ac '^ *Compiling ' "$logf" 2>/dev/null) || true
    last=$(grep -a '^ *\(Compiling\|Installing\|Finished\|Downloaded\|Blocking\)' "$logf" 2>/dev/null | tail -n 1 | sed 's/^ *//') || true
    printf 'crate %s of ~%s; %s' "${n:-0}" "$NISSHI_CRATES" "${last:-starting}"
  else
    last=$(tail -n 1 "$logf" 2>/dev/null | tr -d '\r' | sed 's/^ *//' | cut -c1-100) || true
    printf '%s' "${last:-starting}"
  fi
}

# Whether a finished background step left what it was for.
step_ok() { # name
  case $1 in
    nisshi) [ -x "$NISSHI_BIN" ] ;;
    venv) venv_ready ;;
    prometheus) prometheus_ready ;;
    *) return 1 ;;
  esac
}

# Once per step that has ended: "done in ..." or the failure with its log (`up` stops at its next
# step_wait). Called by the heartbeat and by step_wait, whichever sees the end first.
step_report() { # name pid start log
  local name=$1 pid=$2 start=$3 logf=$4 took
  [ -e "$STEPS/$name.reported" ] && return 0
  : >"$STEPS/$name.reported"
  local end
  end=$(cat "$STEPS/$name.end" 2>/dev/null) || end=$(date +%s)
  took=$(elapsed $((end - start)))
  if step_ok "$name"; then
    say "$name: done in $took (log $logf)"
  else
    say "$name: FAILED after $took; see $logf:
$(tail -n 25 "$logf" 2>/dev/null)"
  fi
}

# Every 30 s, one line per background step still running, and a line when one ends. Started by
# `up`, ended when `up` ends.
heartbeat() {
  local f name pid start logf now extra
  while sleep "${STACK_HEARTBEAT_SECS:-30}"; do
    kill -0 $$ 2>/dev/null || exit 0 # `up` is gone ($$ is its pid in this subshell too)
    now=$(date +%s)
    for f in "$STEPS"/*; do
      name=${f##*/}
      [ -f "$f" ] && [[ $name != *.* ]] || continue
      read -r pid start logf <"$f" || continue
      if ! kill -0 "$pid" 2>/dev/null; then
        step_report "$name" "$pid" "$start" "$logf"
        continue
      fi
      extra=""
      [ "$name" = nisshi ] && extra=" (about $NISSHI_ESTIMATE_MIN min in all, measured on 2 cores shared with another build)"
      say "$name: $(elapsed $((now - start))) elapsed$extra; $(step_progress "$name" "$logf")"
    done
  done
}

# Background steps run as children of this script, output to their log. (The broker build runs
# in a session of its own, so that a failure elsewhere or Ctrl-C does not throw away its minutes:
# the next `up` waits for it, as an `up` waits for a build someone else started into its folder.)
step_start() { # name log function...
  local name=$1 logf=$2; shift 2
  mkdir -p "$(dirname "$logf")"
  # The step's end time, for an exact "done in" (the heartbeat sees the end up to 30 s late).
  (
    set +e
    (set -e; "$@")
    rc=$?
    date +%s >"$STEPS/$name.end"
    exit $rc
  ) >"$logf" 2>&1 </dev/null &
  step_begin "$name" $! "$(date +%s)" "$logf"
}

# Waits for a background step (possibly not our child: a build someone else started), then
# checks what it left; dies with its log when it failed.
step_wait() { # name
  local name=$1 pid start logf
  [ -f "$STEPS/$name" ] || return 0
  read -r pid start logf <"$STEPS/$name"
  while kill -0 "$pid" 2>/dev/null; do sleep 1; done
  wait "$pid" 2>/dev/null || true
  step_report "$name" "$pid" "$start" "$logf"
  step_ok "$name" || die "$name failed; see $logf"
  rm -f "$STEPS/$name" "$STEPS/$name.reported" "$STEPS/$name.end"
}

# ---- The Kafka broker, built once with only the storage this stack uses: sqlite (the `libsql`
# feature; memory storage is always built). nisshi's default features add the S3 (dynostore) and
# PostgreSQL engines. Measured on this project's 2-core machine (README, "Setup timing").
NISSHI_FEATURES=libsql
NISSHI_ESTIMATE_MIN=26 # minutes, measured here with another cargo build sharing the 2 cores (README "Setup timing")
NISSHI_CRATES=458      # "Compiling" lines of that build, for the progress line
NISSHI_LOG="$BUILD_LOGS/nisshi-build.log"

# The pid of a `cargo install nisshi` into our folder, whoever started it.
nisshi_build_pid() {
  pgrep -f -- "cargo( .*)? install nisshi .*--root $NISSHI_ROOT( |\$)" | head -n 1 || true
}

start_nisshi() {
  [ -x "$NISSHI_BIN" ] && return 0
  mkdir -p "$BUILD_LOGS"
  # One check-and-start at a time (two `up`s at once must not start two builds). cargo itself
  # does not stop a second `cargo install` into the same root: each builds in a temp dir.
  exec 8>"$TRIBUTARY_CACHE/nisshi-$NISSHI_VERSION.lock"
  flock 8
  local pid start logf
  pid=$(nisshi_build_pid)
  if [ -n "$pid" ]; then
    start=$(($(date +%s) - $(ps -o etimes= -p "$pid" | tr -d ' ')))
    logf=$(readlink "/proc/$pid/fd/2" 2>/dev/null) || true
    [ -f "$logf" ] || logf=$NISSHI_LOG
    step_begin nisshi "$pid" "$start" "$logf"
    say "nisshi: a build into $NISSHI_ROOT is already running (pid $pid, $(elapsed $(($(date +%s) - start))) so far); waiting for it instead of starting another"
  else
    rustup toolchain list 2>/dev/null | grep -q '^nightly' ||
      die "the Kafka broker (nisshi $NISSHI_VERSION) builds only with a nightly toolchain; none is installed (rustup toolchain list)"
    say "nisshi: building the Kafka broker $NISSHI_VERSION (features: $NISSHI_FEATURES) once into $NISSHI_ROOT in the background: about $NISSHI_ESTIMATE_MIN minutes on 2 cores (measured here while another cargo build ran), log $NISSHI_LOG"
    # --wait: setsid stays the parent (and $! stays alive) even if it had to fork.
    # Without CARGO_TARGET_DIR (env.sh sets it for our own builds) cargo install builds in a
    # temp dir of its own: sharing ours made it wait on cargo's lock for as long as the release
    # build below held it (measured on a fresh machine), and a nightly build shares no
    # artefacts with stable ones anyway.
    setsid --wait env -u CARGO_TARGET_DIR cargo +nightly install nisshi --version "$NISSHI_VERSION" --locked \
      --no-default-features --features "$NISSHI_FEATURES" \
      --root "$NISSHI_ROOT" >"$NISSHI_LOG" 2>&1 </dev/null 8>&- &
    step_begin nisshi $! "$(date +%s)" "$NISSHI_LOG"
  fi
  exec 8>&-
}

venv_ready() { [ -x "$VENV/bin/python" ] && cmp -s "$here/requirements.txt" "$VENV/.requirements"; }
install_venv() { # explicit returns: a background step does not rely on set -e
  local req="$here/requirements.txt"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || return 1
  "$VENV/bin/pip" install --disable-pip-version-check --progress-bar off -r "$req" || return 1
  cp "$req" "$VENV/.requirements"
}
start_venv() {
  venv_ready && return 0
  say "venv: installing python packages (SecantusDB, noida-db, confluent-kafka) into $VENV in the background"
  step_start venv "$BUILD_LOGS/venv.log" install_venv
}

# Prometheus (and promtool, which lints our /metrics output) from Debian's package.
prometheus_ready() { command -v promtool >/dev/null && command -v prometheus >/dev/null; }
install_prometheus() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q prometheus || { apt-get update -q && apt-get install -y -q prometheus; }
}
start_prometheus() {
  prometheus_ready && return 0
  command -v apt-get >/dev/null || die "prometheus is missing and apt-get is not available to install it"
  say "prometheus: installing the Debian package in the background"
  step_start prometheus "$BUILD_LOGS/prometheus-install.log" install_prometheus
}

# The binary the stack, the demo and the shell suites run: one release build ($TRIBUTARY_BIN).
# No -q: cargo's own progress shows (it is a few minutes from cold on 2 cores).
build_cli() {
  local t0=$SECONDS
  # rdkafka's `ssl` feature (TLS and SASL to Kafka) builds against the system's OpenSSL.
  if ! pkg-config --exists openssl 2>/dev/null; then
    command -v apt-get >/dev/null || die "OpenSSL's headers are missing (libssl-dev) and apt-get is not available to install them"
    say "tributary: installing libssl-dev and pkg-config (rdkafka's TLS/SASL support builds against them)"
    apt-get install -y -q libssl-dev pkg-config || { apt-get update -q && apt-get install -y -q libssl-dev pkg-config; } ||
      die "apt-get install libssl-dev pkg-config failed"
  fi
  say "tributary: cargo build --release -p tributary (-> $TRIBUTARY_BIN)"
  (cd "$root" && cargo build --release -p tributary) || die "cargo build --release -p tributary failed (output above)"
  [ -x "$TRIBUTARY_BIN" ] || die "cargo built, but $TRIBUTARY_BIN is missing (is TRIBUTARY_BIN overridden to another profile?)"
  say "tributary: built in $(elapsed $((SECONDS - t0)))"
}

install_all() {
  local t0=$SECONDS hb=""
  rm -rf "$STEPS"
  start_nisshi
  start_venv
  start_prometheus
  if ls "$STEPS"/* >/dev/null 2>&1; then
    heartbeat &
    hb=$!
    # shellcheck disable=SC2064
    trap "kill $hb 2>/dev/null || true; leftover_steps" EXIT
  fi
  build_cli
  step_wait venv
  step_wait prometheus
  step_wait nisshi
  if [ -n "$hb" ]; then kill "$hb" 2>/dev/null || true; trap - EXIT; fi
  [ $((SECONDS - t0)) -lt 10 ] || say "install steps: done in $(elapsed $((SECONDS - t0)))"
}

# On a failed `up`: what is still running in the background.
leftover_steps() {
  local f pid start logf
  for f in "$STEPS"/*; do
    [ -f "$f" ] || continue
    read -r pid start logf <"$f" || continue
    kill -0 "$pid" 2>/dev/null || continue
    if [ "${f##*/}" = nisshi ]; then
      say "nisshi: the broker build goes on in the background (pid $pid, log $logf); the next 'make up' waits for it (kill $pid stops it)"
    fi
  done
}

ensure_postgres() {
  read -r host port < <(host_port "$TRIBUTARY_DATABASE_URL")
  if ! answers "$host" "$port"; then
    command -v pg_ctlcluster >/dev/null || die "PostgreSQL does not answer on $host:$port and is not installed (apt-get install postgresql)"
    log "postgres: starting the installed cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
    mkdir -p "$PIDS"; echo "pg_ctlcluster" >"$PIDS/postgres.started"
    wait_port postgres "$host" "$port" 30
  fi
  local db="${TRIBUTARY_DATABASE_URL##*/}"; db="${db%%\?*}"
  local admin="${TRIBUTARY_DATABASE_URL%/*}/postgres"
  if ! psql "$admin" -Atqc "select 1 from pg_database where datname = '$db'" | grep -q 1; then
    psql "$admin" -qc "create database \"$db\"" >/dev/null || die "could not create database $db on $host:$port"
    log "postgres: created database $db"
  fi
  log "postgres: answers on $host:$port (database $db)"
}

ensure_redis() {
  read -r host port < <(host_port "$TRIBUTARY_REDIS_URL")
  if ! answers "$host" "$port"; then
    command -v redis-server >/dev/null || die "Redis does not answer on $host:$port and is not installed (apt-get install redis-server)"
    log "redis: starting redis-server"
    mkdir -p "$PIDS" "$DATA/redis"
    redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
      --dir "$DATA/redis" --pidfile "$PIDS/redis.pid" --logfile "$LOGS/redis.log"
    wait_port redis "$host" "$port" 15
  fi
  log "redis: answers on $host:$port"
}

up() {
  mkdir -p "$PIDS" "$LOGS" "$DATA"
  install_all

  local host port
  read -r host port < <(host_port "$TRIBUTARY_KAFKA_BROKERS")
  mkdir -p "$DATA/nisshi"
  # nisshi reads the path of a sqlite:// URL as relative to its working directory.
  (cd "$DATA/nisshi" && launch nisshi "$host" "$port" 60 -- "$NISSHI_BIN" broker \
    --listener-url "tcp://$host:$port" --advertised-listener-url "tcp://$host:$port" \
    --storage-engine "sqlite://log.db" --group-initial-rebalance-delay 0s)

  read -r host port < <(host_port "$TRIBUTARY_SCHEMA_REGISTRY_URL")
  launch registry "$host" "$port" 60 -- "$TRIBUTARY_BIN" registry --listen "$host:$port"

  read -r host port < <(host_port "$TRIBUTARY_MONGODB_URL")
  mkdir -p "$DATA/mongodb"
  # --sync-on-commit: without it SecantusDB acknowledges journaled writes before they are on disk,
  # and a sink stores offsets on that acknowledgement.
  launch mongodb "$host" "$port" 60 -- "$VENV/bin/secantusd-py" --host "$host" --port "$port" \
    --storage-path "$DATA/mongodb" --sync-on-commit

  read -r host port < <(host_port "$TRIBUTARY_ELASTICSEARCH_URL")
  mkdir -p "$DATA/elasticsearch"
  launch elasticsearch "$host" "$port" 60 -- "$VENV/bin/noida-db" start --only elasticsearch \
    --host "$host" --elasticsearch-port "$port" --data-dir "$DATA/elasticsearch"

  ensure_postgres
  ensure_redis
  log "up: the stack answers (make status for details)"
}

stop_pid() { # name pidfile
  local name=$1 f=$2 pid
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    # The whole process group: noida-db's launcher has a child server.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name: still running after 20 s, killing"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    log "$name: stopped (pid $pid)"
  fi
  rm -f "$f"
}

down() {
  # Reverse order of start: clients of the broker first.
  for name in elasticsearch mongodb registry nisshi redis; do
    [ -f "$PIDS/$name.pid" ] && stop_pid "$name" "$PIDS/$name.pid"
  done
  if [ -f "$PIDS/postgres.started" ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main stop || true
    rm -f "$PIDS/postgres.started"
    log "postgres: stopped (this stack had started it)"
  fi
  log "down: nothing this stack started is running"
}

# Everything the stack holds, gone: the broker's log, the views in every store, the processors'
# local state. For the local stack only (`make reset`): the local broker (nisshi 0.8) sweeps its
# compacted topics key by key, and once earlier runs left a few hundred MB of changelogs that
# sweep keeps a core busy even when idle, which starves the next demo (seen: most orders of a
# second `make demo` on the same broker timing out).
reset() {
  down
  local db="${TRIBUTARY_DATABASE_URL##*/}"; db="${db%%\?*}"
  local admin="${TRIBUTARY_DATABASE_URL%/*}/postgres"
  psql "$admin" -qc "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 \
    && log "postgres: dropped database $db"
  read -r host port < <(host_port "$TRIBUTARY_REDIS_URL")
  redis-cli -h "$host" -p "$port" flushdb >/dev/null 2>&1 && log "redis: flushed $host:$port"
  rm -rf "$DATA" "$TRIBUTARY_RUN_DIR/state"
  log "reset: the broker's log, every view and the local state are gone; 'make up' starts afresh"
}

status() {
  local rc=0 name url host port who
  for pair in "nisshi $TRIBUTARY_KAFKA_BROKERS" "registry $TRIBUTARY_SCHEMA_REGISTRY_URL" \
    "mongodb $TRIBUTARY_MONGODB_URL" "elasticsearch $TRIBUTARY_ELASTICSEARCH_URL" \
    "postgres $TRIBUTARY_DATABASE_URL" "redis $TRIBUTARY_REDIS_URL"; do
    name=${pair%% *}; url=${pair#* }
    read -r host port < <(host_port "$url")
    if running "$name"; then who="started by this stack, pid $(cat "$PIDS/$name.pid")"; else who="not started by this stack"; fi
    if answers "$host" "$port"; then
      printf '%-14s up    %-22s (%s)\n' "$name" "$host:$port" "$who"
    else
      printf '%-14s DOWN  %-22s (%s)\n' "$name" "$host:$port" "$who"; rc=1
    fi
  done
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  reset) reset ;;
  *) die "usage: stack.sh up|down|status|reset" ;;
esac
