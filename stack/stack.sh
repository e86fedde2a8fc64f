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
NISSHI_BIN="$TRIBUTARY_CACHE/nisshi-$NISSHI_VERSION/bin/nisshi"
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

install_nisshi() {
  [ -x "$NISSHI_BIN" ] && return 0
  rustup toolchain list 2>/dev/null | grep -q '^nightly' ||
    die "the Kafka broker (nisshi $NISSHI_VERSION) builds only with a nightly toolchain; none is installed (rustup toolchain list)"
  log "building the Kafka broker nisshi $NISSHI_VERSION once into $TRIBUTARY_CACHE (about 16 minutes on 2 cores)"
  mkdir -p "$TRIBUTARY_CACHE/logs"
  cargo +nightly install nisshi --version "$NISSHI_VERSION" --locked \
    --root "$TRIBUTARY_CACHE/nisshi-$NISSHI_VERSION" >"$TRIBUTARY_CACHE/logs/nisshi-build.log" 2>&1 ||
    die "building nisshi failed; see $TRIBUTARY_CACHE/logs/nisshi-build.log"
}

install_venv() {
  local req="$here/requirements.txt" stamp="$VENV/.requirements"
  if [ -x "$VENV/bin/python" ] && cmp -s "$req" "$stamp"; then return 0; fi
  log "installing python packages (SecantusDB, noida-db, confluent-kafka) into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$req" || die "pip install -r $req failed"
  cp "$req" "$stamp"
}

# Prometheus (and promtool, which lints our /metrics output) from Debian's package.
install_prometheus() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null && return 0
  command -v apt-get >/dev/null || die "prometheus is missing and apt-get is not available to install it"
  log "installing prometheus (Debian package)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null; }; } ||
    die "apt-get install prometheus failed"
}

build_cli() {
  log "building the tributary binary (cargo build -p tributary)"
  (cd "$root" && cargo build -q -p tributary) || die "cargo build -p tributary failed"
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
  install_nisshi
  install_venv
  install_prometheus
  build_cli

  local host port
  read -r host port < <(host_port "$TRIBUTARY_KAFKA_BROKERS")
  mkdir -p "$DATA/nisshi"
  # nisshi reads the path of a sqlite:// URL as relative to its working directory.
  (cd "$DATA/nisshi" && launch nisshi "$host" "$port" 60 -- "$NISSHI_BIN" broker \
    --listener-url "tcp://$host:$port" --advertised-listener-url "tcp://$host:$port" \
    --storage-engine "sqlite://log.db" --group-initial-rebalance-delay 0s)

  read -r host port < <(host_port "$TRIBUTARY_SCHEMA_REGISTRY_URL")
  launch registry "$host" "$port" 60 -- "$CARGO_TARGET_DIR/debug/tributary" registry --listen "$host:$port"

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
  *) die "usage: stack.sh up|down|status" ;;
esac
