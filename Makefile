# bookstream — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
#: Prometheus' promtool, for the /metrics check (tests/helpers.py promtool_check reads PROMTOOL).
export PROMTOOL ?= $(CURDIR)/.cache/promtool/promtool
#: kcat, for the README's kcat + jq example (tests/integration/test_readme_examples.py reads KCAT).
export KCAT ?= $(CURDIR)/.cache/kcat/kcat
export PYTHONPATH := $(CURDIR)
#: `make test` runs the unit tests (CPU-bound, no broker) in this many processes (pytest-xdist).
UNIT_WORKERS ?= 2
#: Live-path tests that need no broker (real WebSockets to the simulator, mostly waiting on the
#: venues' pacing): they run beside the unit tests, not one at a time with the broker's.
BROKER_FREE = tests/integration/test_venue_sessions.py

.PHONY: help install browser promtool kcat schemas kafka-libs kafka-up kafka-down kafka-status kafka-logs cluster-up cluster-down cluster-status cluster-logs run test soak chaos fuzz bench lint format clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[1m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml setup.py app/book_core_c.pyx
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "bookstream needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv, install bookstream with its dev tools and build its compiled book core
	@scripts/kafka.sh libs

browser: ## Install Debian's Chromium for the web view tests (needs root or sudo, once)
	@command -v chromium >/dev/null 2>&1 || scripts/install-chromium.sh

promtool: $(PROMTOOL) ## Fetch promtool (Debian's prometheus package, no root needed) into .cache/ for the /metrics check

$(PROMTOOL):
	@scripts/promtool.sh $@

kcat: $(KCAT) ## Fetch kcat (Debian's, with its librdkafka; no root needed) into .cache/ for the README's examples

$(KCAT):
	@scripts/kcat.sh $@

kafka-libs: ## Resolve the Apache Kafka jars from Maven Central (once)
	@scripts/kafka.sh libs

kafka-up: ## Start the local Kafka broker (KRaft, 127.0.0.1:$KAFKA_PORT) unless it runs
	@scripts/kafka.sh up

kafka-down: ## Stop the local Kafka broker
	@scripts/kafka.sh down

kafka-status: ## Say whether the local broker runs and answers
	@scripts/kafka.sh status

kafka-logs: ## Show the local broker's log
	@scripts/kafka.sh logs

# The replicated cluster: its own data dir and ports, beside `make kafka-up`'s single broker.
CLUSTER_ENV = KAFKA_NODES=3 KAFKA_PORT=$${CLUSTER_PORT:-9192} KAFKA_DATA_DIR=$${CLUSTER_DATA_DIR:-$(CURDIR)/.data/kafka-cluster}

cluster-up: ## Start a replicated 3-node KRaft cluster (127.0.0.1:9192,9202,9212) unless it runs
	@$(CLUSTER_ENV) scripts/kafka.sh up && echo "KAFKA_BOOTSTRAP=$$($(CLUSTER_ENV) scripts/kafka.sh bootstrap)"

cluster-down: ## Stop the 3-node cluster
	@$(CLUSTER_ENV) scripts/kafka.sh down

cluster-status: ## Say whether each node of the 3-node cluster runs and answers
	@$(CLUSTER_ENV) scripts/kafka.sh status

cluster-logs: ## Show the 3-node cluster's logs (NODE=2 for one node)
	@$(CLUSTER_ENV) scripts/kafka.sh logs $(NODE)

run: install ## Broker + simulator + worker ingesting it, web on 127.0.0.1:6066 (FEED=live: real venues); Ctrl-C stops all
	@scripts/run.sh

test: install browser promtool kcat ## Run the whole test suite (starts and stops its own broker)
	@# unit tests on every core, then the rest (one broker, one test at a time); exit status 5 is
	@# "no test selected" (a PYTEST_ARGS -k that names only tests of the other half)
	$(BIN)/python -m pytest tests/unit $(BROKER_FREE) -n $(UNIT_WORKERS) $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest tests --ignore=tests/unit $(addprefix --ignore=,$(BROKER_FREE)) $(PYTEST_ARGS) || [ $$? -eq 5 ]

soak: install ## Takeover tests SOAK_N (20) times, each a fresh pytest run; pass/fail counts → bench/soak-results.json
	$(BIN)/python scripts/soak.py

chaos: install ## Long fault scenarios (20 kills, 20 s broker outage, takeovers, bad-frame flood); report → bench/chaos-results.json
	CHAOS=1 $(BIN)/python -m pytest tests/chaos -v -s --timeout=3600 $(PYTEST_ARGS)

fuzz: install ## Property-based fuzzing of every parser and importer with FUZZ_EXAMPLES (20000) examples each
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-20000} $(BIN)/python -m pytest tests/unit -m fuzz --timeout=3600 $(PYTEST_ARGS)

bench: install ## Benchmarks on a broker of their own; table + bench/results.json (BENCH_ONLY=step,… for some)
	$(BIN)/python bench/run.py

schemas: install ## Write schemas/<topic>.json from the record definitions (app/records); commit them
	$(BIN)/faust -A app schemas

lint: install ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .

clean: ## Remove caches, data dirs, the virtualenv and the built book core (stop the broker first)
	@scripts/kafka.sh down || true
	@$(CLUSTER_ENV) scripts/kafka.sh down || true
	rm -rf $(VENV) .cache .data .pytest_cache .mypy_cache .ruff_cache .hypothesis test-artifacts build app/book_core_c.c app/book_core_c.*.so
