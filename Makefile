# The two commands a newcomer needs: `make demo` and `make test`. Both set up everything first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv installs the locked environment exactly (and quickly); its version is the one Airflow 3.3.1 pins.
# It lives in its own venv because `uv pip sync` removes whatever the lock does not list.
UV_VERSION := 0.12.3
UV := .tools/bin/uv

.PHONY: venv system-deps test lint demo servers airflow bench verify lock clean

venv: $(VENV)/.synced

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: requirements-dev.lock | $(UV)
	test -x $(BIN)/python || $(UV) venv -q --python $(PYTHON) $(VENV)
	$(UV) pip sync -q --python $(BIN)/python requirements-dev.lock
	touch $@

# Debian packages some tests use (Maven, PostgreSQL, Chromium, docker-compose); installed if missing.
system-deps:
	bash include/dev/system-deps.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest in two processes side by side (include/dev/run-tests.sh); PYTEST_ARGS go to both.
test: lint system-deps
	bash include/dev/run-tests.sh $(PYTEST_ARGS)

# DEMO_ENGINE=opensearch:2.19.6 (or elasticsearch:7.10.2 ...) runs it against another engine.
demo: venv
	$(BIN)/python -m include.dev.demo

# A local engine (DEMO_ENGINE too) and S3 server with a seeded week, for the CLI, verify and a local Airflow; until Ctrl-C.
servers: venv
	$(BIN)/python -m include.dev.servers

# A local Airflow (api-server, scheduler, dag-processor on a throwaway PostgreSQL) for the Quickstart; until Ctrl-C.
airflow: venv
	$(BIN)/python -m include.dev.airflow

# elasticdump for the bench, from npm, into .tools/elasticdump (once per version); include/dev/bench.py runs it there.
ELASTICDUMP_VERSION := 6.125.1
ELASTICDUMP_STAMP := .tools/elasticdump/.installed-$(ELASTICDUMP_VERSION)

$(ELASTICDUMP_STAMP):
	npm install --prefix .tools/elasticdump --no-audit --no-fund --loglevel=error elasticdump@$(ELASTICDUMP_VERSION)
	touch $@

# A benchmark, not a test: the pipeline against a raw-HTTP ceiling, elasticdump and a naive script on a
# seeded cluster, also at +20 ms latency and over one 10x window; prints figures and ratios.
bench: venv $(ELASTICDUMP_STAMP)
	$(BIN)/python -m include.dev.bench $(BENCH_ARGS)

# Check a finished backfill against its manifests and Elasticsearch: make verify CONF=conf.json
verify: venv
	PYTHONPATH=plugins $(BIN)/python -m es_backfill.cli verify --conf $(CONF) $(VERIFY_ARGS)

# Re-resolve requirements-dev.lock from requirements-dev.in and Airflow's 3.3.1 constraints.
lock: | $(UV)
	$(UV) pip compile -q requirements-dev.in -c constraints/airflow-3.3.1-py3.12.txt \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		--no-header --annotation-style line -o requirements-dev.lock

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache
