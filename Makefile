# exportd — `make help` lists the targets.
# Without DATABASE_URL, targets that need PostgreSQL start a private cluster (scripts/pg.sh)
# from the installed server binaries (installing Debian's postgresql package if missing).

SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
ROWS ?= 1000000
BIN := target/release/exportd
# The database: DATABASE_URL when set, else the private cluster (started on demand).
DB = $${DATABASE_URL:-$$(scripts/pg.sh start)}

.PHONY: help build run seed test lint fmt openapi verify pg-stop clean bench bench-scale bench-formats bench-peers chaos abuse

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

build: ## build the release binary
	$(CARGO) build --release --locked

run: build ## migrate, seed the demo dataset when empty, serve on http://127.0.0.1:8080 (Swagger UI at /docs)
	db=$(DB) && DATABASE_URL=$$db $(BIN) seed --if-empty --rows $(ROWS) && DATABASE_URL=$$db EXPORTD_DEV_KEY_FILE=target/dev-key exec $(BIN) serve

seed: build ## (re)create the demo dataset with ROWS rows (default 1000000)
	DATABASE_URL=$(DB) $(BIN) seed --rows $(ROWS)

test: ## run the whole test suite against real PostgreSQL
	@echo "Tests inject faults on purpose (kills, stalls, a dead database): the WARN and ERROR lines they log are expected; the 'test result' lines at the end are what count."
	mkdir -p target && db=$(DB) && DATABASE_URL=$$db scripts/drop-test-dbs.sh && \
	  DATABASE_URL=$$db $(CARGO) test --release --locked --features faults -- --test-threads 2 2>&1 | tee target/test.log; \
	  status=$${PIPESTATUS[0]}; grep -E '^test result:' target/test.log | tail -n 20; exit $$status

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets --locked --features faults -- -D warnings
	$(CARGO) clippy --release --lib --bins --locked -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

openapi: build ## regenerate the committed OpenAPI spec (openapi/exportd.json)
	mkdir -p openapi && $(BIN) openapi > openapi/exportd.json

verify: lint build ## lint, fail when the committed OpenAPI spec is stale, lint the spec (redocly: 0 errors, 0 warnings), fuzz the API (schemathesis)
	$(BIN) openapi | diff -u openapi/exportd.json - && echo "openapi/exportd.json is up to date"
	tests/clients/run.sh setup
	cd openapi && ../tests/clients/node_modules/.bin/redocly lint --max-problems 100 exportd.json 2>&1 | tee ../target/redocly.log; \
	  grep -q "valid" ../target/redocly.log && ! grep -qE "[0-9]+ warnings?" ../target/redocly.log
	scripts/fuzz-api.sh

pg-stop: ## stop the private PostgreSQL cluster
	scripts/pg.sh stop

clean: ## remove build output and exported files
	$(CARGO) clean; rm -rf exports

bench: ## psql \copy vs exportd end to end, memory, download, API latency (ROWS=, ROUNDS=)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	db=$(DB) && DATABASE_URL=$$db ROWS=$(ROWS) $(CARGO) bench --locked --bench export
	$(MAKE) bench-formats
	$(MAKE) bench-peers
	$(MAKE) bench-scale

bench-formats: ## JSON Lines and Parquet vs psql \copy CSV and DuckDB's Parquet, time and memory (ROWS=, ROUNDS=)
	tests/formats/readers.sh setup
	db=$(DB) && DATABASE_URL=$$db ROWS=$(ROWS) $(CARGO) bench --locked --bench formats

bench-peers: ## exportd (parallelism 1, 2, 4) vs psql \copy (1 and N key ranges), DuckDB, ConnectorX: time, memory, CPU, output (ROWS=, ROUNDS=)
	command -v /usr/bin/time >/dev/null || (apt-get update -qq && apt-get install -y -qq time)
	REQUIREMENTS=benches/peers/requirements.txt tests/formats/readers.sh setup
	db=$(DB) && DATABASE_URL=$$db ROWS=$(ROWS) $(CARGO) bench --locked --bench peers

bench-scale: ## one 20M-row export vs 1M (per-row cost, memory), S3 vs local, 20 concurrent exports with 1-3 workers (SCALE_ROWS=, BASE_ROWS=)
	scripts/s3.sh install
	db=$(DB) && DATABASE_URL=$$db $(CARGO) bench --locked --bench scale

chaos: ## the whole fault-injection suite (kills, pauses, database restarts, full disk)
	mkdir -p target && $(CARGO) test --release --locked --test chaos -- --include-ignored --test-threads 1 2>&1 | tee target/chaos.log; \
	  status=$${PIPESTATUS[0]}; grep -E '^test result:' target/chaos.log; exit $$status

abuse: ## hostile and careless clients against a fresh server each: limits hit, statuses, peak RSS, /healthz p99
	db=$(DB) && DATABASE_URL=$$db $(CARGO) bench --locked --bench abuse
