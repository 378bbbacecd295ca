# nightshift: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# `.env`, when it exists, reaches every recipe, read as docker compose reads it: `NAME=value`
# lines, the value taken literally (`$` and spaces kept, one pair of surrounding quotes
# removed, ` #…` after an unquoted value a comment). A variable set in the environment or
# on the command line wins; an empty value is not set at all (empty means unset).
ifneq ($(wildcard .env),)
_dotenv_value = $(shell sed -n 's/^$(1)=//p' .env | tail -n 1 | tr -d '\r' | sed \
  -e "s/^[[:space:]]*\"\(.*\)\"[[:space:]]*$$/\1/" -e t \
  -e "s/^[[:space:]]*'\(.*\)'[[:space:]]*$$/\1/" -e t \
  -e 's/[[:space:]]\{1,\}#.*$$//' -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$$//')
$(foreach n,$(sort $(shell sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=[[:space:]]*[^[:space:]].*/\1/p' .env)),\
  $(if $(filter environment% command%,$(origin $(n))),,\
    $(eval $(n) := $$(call _dotenv_value,$(n)))\
    $(if $($(n)),$(eval export $(n))$(eval _DOTENV_NAMES += $(n)),$(eval undefine $(n)))))
# the names it set, so the test suite can drop them (tests/conftest.py): `make test` runs
# against the test servers, never against the warehouse or landing zone a `.env` names
export NIGHTSHIFT_DOTENV_NAMES := $(strip $(_DOTENV_NAMES))
endif

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Everything runs with the project's Airflow home, SQLite metadata, no examples, no telemetry.
export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export AIRFLOW__USAGE_DATA_COLLECTION__ENABLED := False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := True
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export PYTHONPATH := $(CURDIR)

# Demo API port (0: any free port) and token (reaches the API in its environment, not argv).
DEMO_API_PORT ?= 0
DEMO_API_TOKEN ?= demo-token
export DEMO_API_TOKEN

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	@# a venv whose ensurepip failed (seen once on a busy machine) is made again, once
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); sleep 5; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## Create .venv and install the pinned dependencies

ADAPTERS_VENV := .venv-adapters
$(ADAPTERS_VENV)/.installed: requirements-adapters.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	@test -x $(ADAPTERS_VENV)/bin/python || $(PYTHON) -m venv $(ADAPTERS_VENV)
	$(ADAPTERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ADAPTERS_VENV)/bin/python -m pip install --quiet -r requirements-adapters.txt
	@touch $@

.PHONY: adapters-venv
adapters-venv: $(ADAPTERS_VENV)/.installed ## dbt-snowflake + dbt-bigquery in .venv-adapters (they conflict with .venv's pins)

$(AIRFLOW_HOME)/.initialized: $(STAMP)
	@mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate >/dev/null
	$(BIN)/airflow pools set warehouse_writer 1 "one writer of the DuckDB warehouse" >/dev/null
	@touch $@

.PHONY: airflow-init
airflow-init: $(AIRFLOW_HOME)/.initialized ## Initialise Airflow's metadata DB (SQLite) and pools

.PHONY: demo
demo: airflow-init ## Build demo sources (SQLite + API) and run the nightly pipeline end to end
	$(BIN)/nightshift demo --data-dir $(CURDIR)/data --port $(DEMO_API_PORT)

.PHONY: migration-demo
migration-demo: $(STAMP) ## Zero-downtime move of the demo source to a new PostgreSQL schema (NIGHTSHIFT_MIGRATION_PG_URL)
	$(BIN)/nightshift migration-demo

.PHONY: nightly
nightly: airflow-init ## Run the nightly pipeline for business day DATE=YYYY-MM-DD through Airflow (FULL=1: full rebuild; ALLOW_MASS_DELETE=1)
	@test -n "$$DATE" || { echo "usage: make nightly DATE=YYYY-MM-DD [FULL=1] [ALLOW_MASS_DELETE=1]"; exit 2; }
	$(BIN)/nightshift nightly --date "$$DATE" $(if $(filter 1 true yes,$(FULL)),--full,) $(if $(filter 1 true yes,$(ALLOW_MASS_DELETE)),--allow-mass-delete,)

.PHONY: backfill
backfill: airflow-init ## Nights FROM=YYYY-MM-DD TO=YYYY-MM-DD: airflow backfill create when a scheduler runs, else dags test per day
	@test -n "$$FROM" -a -n "$$TO" || { echo "usage: make backfill FROM=YYYY-MM-DD TO=YYYY-MM-DD"; exit 2; }
	$(BIN)/nightshift backfill --from "$$FROM" --to "$$TO"

.PHONY: rollback
rollback: $(STAMP) ## Publish a kept warehouse version again: the one before the current, or TO=<run id> (LIST=1 lists them)
	$(BIN)/nightshift rollback $(if $(TO),--to "$$TO",) $(if $(filter 1,$(LIST)),--list,)

.PHONY: unlock
unlock: $(STAMP) ## Remove the warehouse's run lease left by a dead run (nightshift lease shows who holds it)
	$(BIN)/nightshift lease unlock

.PHONY: replay
replay: $(STAMP) ## Re-validate quarantined payments (all, or DATE=YYYY-MM-DD's runs); those that pass land with the next nightly, once
	$(BIN)/nightshift replay $(if $(DATE),--date "$$DATE",)

.PHONY: airflow
airflow: airflow-init ## Airflow UI on http://127.0.0.1:8080 (standalone; login admin, password in .airflow/passwords.json, 0600)
	$(BIN)/nightshift ui

# The compose stack (docker-compose.yml): reads .env (copy .env.example, set every
# secret); COMPOSE_PROFILES=s3 there adds MinIO for an s3:// landing zone.
COMPOSE ?= docker compose
.PHONY: up
up: ## Start the compose stack (CeleryExecutor; needs .env); UI on http://127.0.0.1:8080
	@test -f .env || { echo "no .env: copy .env.example to .env and set its secrets"; exit 2; }
	$(COMPOSE) up --detach --build

.PHONY: down
down: ## Stop the compose stack (its volumes stay; `docker compose down --volumes` drops them)
	$(COMPOSE) down

# The suite runs on TEST_WORKERS processes (pytest-xdist), one test file per worker at a
# time (module fixtures stay whole); TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,)
.PHONY: test
test: $(STAMP) ## Run the whole test suite on TEST_WORKERS processes (starts throwaway servers where none run)
	$(BIN)/python -m pytest $(XDIST)

# The inner loop: the suites that need no database server, no Airflow run and no dbt
# build, without the tests that use a server (marked `server` by tests/conftest.py) and three
# slow ones (a warehouse built by dbt; a memory profile). `make test` runs everything.
FAST_SUITES := tests/test_configuration.py tests/test_docs.py tests/test_fast_lane.py tests/test_layers.py tests/test_makefile.py \
	tests/test_packaging.py tests/alerting/test_rules.py tests/alerting/test_sinks.py \
	tests/core/test_files.py tests/core/test_ops.py tests/core/test_run_ids.py tests/core/test_run_steps.py \
	tests/core/test_tables.py \
	tests/dags/test_schedule_dst.py tests/demo/test_api.py tests/demo/test_servers.py \
	tests/extract/test_api_client.py \
	tests/extract/test_api_extract.py tests/extract/test_landing.py \
	tests/extract/test_landing_sync_sources.py tests/extract/test_replay.py \
	tests/migrate/test_backfill.py tests/migrate/test_dual_write.py tests/migrate/test_mapping.py \
	tests/pipeline/test_airflow_run.py tests/pipeline/test_cli.py tests/pipeline/test_clock.py \
	tests/pipeline/test_http_retry.py tests/pipeline/test_retention.py \
	tests/pipeline/test_run_metrics.py tests/pipeline/test_settings.py \
	tests/pipeline/test_settings_env.py tests/pipeline/test_settings_errors.py \
	tests/pipeline/test_timeout_settings.py tests/pipeline/test_warehouse_lease.py \
	tests/quality/test_parity.py tests/report/test_build.py tests/transform/test_daily_sales.py \
	tests/transform/test_money.py tests/warehouse/test_guards.py \
	tests/warehouse/test_duckdb_memory_limit.py tests/warehouse/test_load.py \
	tests/warehouse/test_publish.py tests/warehouse/test_query.py tests/warehouse/test_rollback.py
FAST_DESELECT := tests/warehouse/test_query.py::test_every_analyst_query_runs_on_a_built_warehouse \
	tests/warehouse/test_query.py::test_late_order_share_counts_open_orders_two_days_old \
	tests/extract/test_api_extract.py::test_peak_memory_is_flat_in_the_window_size
.PHONY: test-fast
test-fast: $(STAMP) ## The tests that need no server, Airflow run or dbt build (about 1.5 min)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not e2e and not server" \
	  $(addprefix --deselect ,$(FAST_DESELECT)) $(FAST_SUITES)

# The clock check: the suites that generate data and start no server or thread with
# timed waits, with the system clock moved ahead (libfaketime); the suites with HTTP
# servers or reader threads with the pipeline's injected clock moved (NIGHTSHIFT_NOW:
# libfaketime breaks socket and lock timeouts). No test may depend on the date it runs on.
# One shift of 400 days (57 weeks and a day: another weekday, month, year and DST offset).
CLOCK_SHIFTS ?= +400d
CLOCK_SUITES := tests/migrate tests/transform tests/demo/test_generator.py tests/quality \
	tests/report/test_build.py tests/pipeline tests/warehouse/test_load.py \
	tests/warehouse/test_publish.py tests/warehouse/test_rollback.py tests/alerting/test_rules.py \
	tests/extract/test_db_extract.py tests/extract/test_landing.py tests/extract/test_key_ranges.py \
	tests/extract/test_sharded_pipeline.py tests/extract/test_replay.py
# in tests/pipeline but with lease heartbeat threads or a stalling proxy: injected clock only
CLOCK_TIMED := tests/pipeline/test_warehouse_lease.py tests/pipeline/test_guard_retries.py
# in tests/pipeline but about which database is the source, not the date: `make test` only
# (about 5 min of nights each time)
CLOCK_DATELESS := tests/pipeline/test_source_identity.py tests/pipeline/test_source_switch.py
CLOCK_SERVER_SUITES := $(CLOCK_TIMED) tests/extract/test_api_client.py tests/extract/test_api_extract.py \
	tests/alerting/test_sinks.py tests/demo/test_api.py tests/extract/test_pg_copy.py \
	tests/extract/test_parallel_extract.py tests/extract/test_shards.py \
	tests/extract/test_incremental_concurrency.py tests/extract/test_replica.py
.PHONY: test-clock
test-clock: $(STAMP) ## The tests again with the clock moved ahead (CLOCK_SHIFTS; needs faketime), on TEST_WORKERS processes
	@command -v faketime >/dev/null || { echo "test-clock needs faketime (apt-get install faketime)"; exit 2; }
	@for shift in $(CLOCK_SHIFTS); do \
	  echo "[test-clock] system clock $$shift (faketime)"; \
	  NIGHTSHIFT_NIGHTS_SEQUENCES=2 faketime -f "$$shift" $(BIN)/python -m pytest -q -p no:cacheprovider $(XDIST) --timeout=300 $(addprefix --ignore=,$(CLOCK_TIMED) $(CLOCK_DATELESS)) $(CLOCK_SUITES) || exit 1; \
	  echo "[test-clock] injected clock NIGHTSHIFT_NOW=$$shift"; \
	  NIGHTSHIFT_NOW="$$shift" $(BIN)/python -m pytest -q -p no:cacheprovider $(XDIST) $(CLOCK_SERVER_SUITES) || exit 1; \
	done

.PHONY: test-nights-large
test-nights-large: $(STAMP) ## The nights-in-any-order property on 200 seeded sequences (nightly CI; ~25 min)
	NIGHTSHIFT_NIGHTS_SEQUENCES=200 $(BIN)/python -m pytest -q tests/pipeline/test_nights_in_any_order.py

# The dbt SQL sqlfluff reads (.sqlfluff: DuckDB dialect, dbt templater, offline); other
# .sql files (migrate/new_schema.sql, the macros) are not dbt models.
SQLFLUFF_PATHS := $(wildcard dbt_project/models dbt_project/snapshots dbt_project/tests dbt_project/analyses)
.PHONY: lint
lint: $(STAMP) ## ruff (lint + format check), sqlfluff on the dbt SQL, every pre-commit hook on every file
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/sqlfluff lint $(SQLFLUFF_PATHS)
	$(BIN)/pre-commit run --all-files --show-diff-on-failure

.PHONY: fmt
fmt: $(STAMP) ## Format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: bench
BENCH_ORDERS ?= 5000000
bench: $(STAMP) ## Benchmarks (BENCH lines); extract and verify need PostgreSQL (NIGHTSHIFT_BENCH_PG_URL)
	$(BIN)/python bench/bench_generator.py --orders 1000000
	$(BIN)/python bench/bench_extract.py --orders $(BENCH_ORDERS)
	$(BIN)/python bench/bench_dbt.py --orders 5000000  # raw data made in DuckDB
	$(BIN)/python bench/bench_etl.py --orders 5000000  # dataset cached in data/bench/
	$(BIN)/python bench/bench_verify.py --orders $(BENCH_ORDERS)  # creates bench/.venv-reladiff
	$(BIN)/python bench/bench_api_extract.py --payments 100000 1000000  # peak memory flat in the window
	$(BIN)/python bench/bench_warehouse.py --orders 1000000
	$(BIN)/python bench/bench_landing.py --rows 1000000  # local disk vs an S3 server on loopback
	$(BIN)/python bench/bench_night_fixed.py --orders-per-day 1000  # a 60k-order night's fixed costs

.PHONY: bench-scale
BENCH_SCALE_SIZES ?= 1000000,5000000,20000000
bench-scale: $(STAMP) ## The same ~10k-order night on 1M/5M/20M-order histories, after one warm-up night (BENCH night lines, docs/bench-scale.png; PostgreSQL)
	BENCH_SCALE_SIZES=$(BENCH_SCALE_SIZES) $(BIN)/python bench/bench_scale.py --warmup

# Values users type on the command line reach recipes as quoted shell variables ("$$DATE"),
# never pasted into the recipe's text: `make nightly DATE='…; rm -rf ~'` runs nothing.
export SQL DATE FROM TO
.PHONY: query
query: $(STAMP) ## Read-only SQL shell on the warehouse; or one statement: make query SQL="select …"
	$(BIN)/nightshift query $${SQL:+--sql "$$SQL"}

WAREHOUSE_PATH ?= $(CURDIR)/data/warehouse.duckdb
DOCS_PORT ?= 8081
DBT := cd dbt_project && DBT_DUCKDB_PATH=$(WAREHOUSE_PATH) $(CURDIR)/$(BIN)/dbt

.PHONY: dev-warehouse
dev-warehouse: $(STAMP) ## Copy the published warehouse to data/dev.duckdb, what a dbt build by hand in dbt_project builds
	$(BIN)/nightshift dev-warehouse

.PHONY: docs-build
docs-build: $(STAMP) ## Build dbt docs into dbt_project/target (needs a warehouse: make demo)
	@test -f $(WAREHOUSE_PATH) || { echo "no warehouse at $(WAREHOUSE_PATH): run make demo first"; exit 2; }
	$(DBT) docs generate --profiles-dir . --target duckdb
	@rm -rf dbt_project/target/quality
	@if [ -d data/docs/quality ]; then cp -r data/docs/quality dbt_project/target/quality; \
	  echo "GX Data Docs: http://localhost:$(DOCS_PORT)/quality/<step>/quality_summary.html (steps: $$(ls data/docs/quality | tr '\n' ' '))"; fi

.PHONY: docs
docs: docs-build ## Serve dbt docs and GX Data Docs on http://localhost:8081
	$(DBT) docs serve --profiles-dir . --port $(DOCS_PORT) --host 127.0.0.1 --no-browser

.PHONY: clean
clean: ## Remove generated data, Airflow home and dbt target (keeps .venv)
	rm -rf data .airflow dbt_project/target dbt_project/logs
