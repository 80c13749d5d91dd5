# The two commands a newcomer needs: `make demo` and `make test`. Both set up everything first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv installs the locked environment quickly; its version is the one Airflow 3.3.1 pins.
UV_VERSION := 0.12.3

.PHONY: venv test lint demo bench lock clean

venv: $(VENV)/.synced

$(VENV)/.synced: requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements-dev.lock
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

demo: venv
	$(BIN)/python -m include.demo

# Re-resolve requirements-dev.lock from requirements-dev.in and Airflow's 3.3.1 constraints.
lock: venv
	$(BIN)/uv pip compile requirements-dev.in -c constraints/airflow-3.3.1-py3.12.txt \
		--python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
		--no-header --annotation-style line -o requirements-dev.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
