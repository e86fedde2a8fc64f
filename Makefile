# Tributary. `make demo` runs the main job; `make test` runs every test against the real local stack.
# Addresses and folders: stack/env.sh.
SHELL := /bin/bash
ENV := source stack/env.sh &&
TIMED := bash stack/tests/timed.sh

.PHONY: demo test chaos up down status reset build fmt lint bench

## The main job: the stack, the pipeline's processes, a seeded workload, and a summary.
demo: up
	$(ENV) bash stack/demo.sh

## Every test, against real servers (starts what it needs).
## Each step is timed (stack/tests/timed.sh): compiling the tests, running them, each shell suite.
test: up
	@$(ENV) rm -f "$$TRIBUTARY_RUN_DIR/test-times"
	$(ENV) $(TIMED) compile cargo test --workspace --no-run
	$(ENV) $(TIMED) cargo-test cargo test --workspace --no-fail-fast
	$(ENV) $(TIMED) lifecycle bash stack/tests/lifecycle.sh
	$(ENV) $(TIMED) prometheus bash stack/tests/prometheus.sh
	$(ENV) $(TIMED) compose bash stack/tests/compose.sh
	$(ENV) CHAOS_ORDERS=$${CHAOS_ORDERS:-1500} $(TIMED) chaos bash stack/tests/chaos.sh
	@$(ENV) $(TIMED) --report

## The pipeline's ten processes killed -9 at random during a workload, each restarted; then the
## saga's invariants and zero drift in all four stores (stack/tests/chaos.sh for the knobs).
chaos: up
	$(ENV) bash stack/tests/chaos.sh

up:
	bash stack/stack.sh up

down:
	bash stack/stack.sh down

status:
	bash stack/stack.sh status

## Stop the stack and delete what it holds: the broker's log, every view, the local state.
reset:
	bash stack/stack.sh reset

## The binary the stack, the demo and the shell suites run ($$TRIBUTARY_BIN; `make up` builds it too).
build:
	$(ENV) cargo build --release -p tributary

fmt:
	cargo fmt --all

## Benchmarks (results and the commands that made them: BENCHMARKS.md).
bench: up
	$(ENV) cargo bench -p tributary-schemas --bench codec
	$(ENV) cargo test -p tributary-sinks --test postgres_bench --test mongodb_bench \
		--test elasticsearch_bench --test redis_bench -- --ignored --nocapture --test-threads 1
	$(ENV) bash stack/bench-streams.sh
	$(ENV) bash stack/bench-saga.sh

lint:
	cargo fmt --all -- --check
	$(ENV) cargo clippy --workspace --all-targets -- -D warnings
