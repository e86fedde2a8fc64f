# The one place where the local stack's addresses and folders are set. Sourced by stack/*.sh and the
# Makefile; the Rust side reads the same variables (runtime/src/config.rs, kept in step by a test).
# Override any of them in the environment.
export TRIBUTARY_KAFKA_BROKERS="${TRIBUTARY_KAFKA_BROKERS:-127.0.0.1:9092}"
export TRIBUTARY_SCHEMA_REGISTRY_URL="${TRIBUTARY_SCHEMA_REGISTRY_URL:-http://127.0.0.1:8081}"
export TRIBUTARY_DATABASE_URL="${TRIBUTARY_DATABASE_URL:-postgres://root@127.0.0.1:5432/tributary}"
export TRIBUTARY_MONGODB_URL="${TRIBUTARY_MONGODB_URL:-mongodb://127.0.0.1:27017}"
export TRIBUTARY_REDIS_URL="${TRIBUTARY_REDIS_URL:-redis://127.0.0.1:6379}"
export TRIBUTARY_ELASTICSEARCH_URL="${TRIBUTARY_ELASTICSEARCH_URL:-http://127.0.0.1:9200}"

# Heavy, reusable artefacts (the broker binary, python venv, cargo's target directory) live outside
# the checkout so that a fresh clone reuses them.
export TRIBUTARY_CACHE="${TRIBUTARY_CACHE:-$HOME/.cache/tributary}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TRIBUTARY_CACHE/target}"
# The tributary binary the stack (registry), the demo and the shell suites run: the release build
# `make up` makes (`cargo build --release -p tributary`). `cargo test` builds its own debug binaries.
export TRIBUTARY_BIN="${TRIBUTARY_BIN:-$CARGO_TARGET_DIR/release/tributary}"
# Pids, logs and data of the processes `make up` starts. Ignored by git.
export TRIBUTARY_RUN_DIR="${TRIBUTARY_RUN_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.run}"
# The python interpreter of the project's venv (SecantusDB, noida-db, confluent-kafka).
export TRIBUTARY_PYTHON="${TRIBUTARY_PYTHON:-$TRIBUTARY_CACHE/venv/bin/python}"
