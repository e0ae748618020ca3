# Flowmend: `make serve` runs it embedded; `make test` runs every check and test.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.13 || (command -v pyenv >/dev/null && pyenv which python3.13 2>/dev/null) || echo python3)
VENV := .venv
PY := $(VENV)/bin/python

# Test services: real PostgreSQL and Redis (see .ci/run, which starts them when down).
TEST_ENV := DATABASE_URL=$${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/flowmend} \
	BROKER_URL=$${TEST_BROKER_URL:-redis://127.0.0.1:6379/15} \
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/14} \
	FLOWMEND_PYTHON_MODULES=examples,tests

.PHONY: setup serve test lint bench clean

$(VENV)/.synced: requirements-dev.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 13), "Flowmend needs Python 3.13 (pyenv install 3.13)"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q uv
	$(PYTHON) -m uv pip sync --python $(PY) requirements-dev.lock
	@touch $@

setup: $(VENV)/.synced

serve: setup
	$(PY) manage.py serve

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: setup lint
	$(TEST_ENV) $(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
