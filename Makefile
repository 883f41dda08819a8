# tierflow — `make run` brings the pipeline up on embedded servers, `make test` tests it.
# Everything installs from the lockfile on first use: a bootstrap venv gets uv, uv builds .venv.

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: browser install run migrate topics test test-unit test-integration chaos lint format schemas bench bench-quick validate-churn clean help

help:
	@echo "make run      - start PostgreSQL, broker, migrations, topics, the three services and the console"
	@echo "make test     - lint, type-check and run every test (unit, integration, end to end)"
	@echo "make migrate  - apply database migrations"
	@echo "make lint     - ruff + mypy (strict)"
	@echo "make chaos    - the full fault scenarios (tests/chaos), results in var/chaos/<run>.json"
	@echo "make schemas  - regenerate the JSON Schemas under docs/schemas and docs/asyncapi.yaml"
	@echo "make bench    - benchmarks against raw broker/database baselines (<10 min); bench-quick <2 min"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (as on our CI machines) Python never
# caches what it compiles, so every service process compiled scikit-learn, SciPy, SQLAlchemy
# and pydantic from source at start-up: ~4 s of CPU per process, ~2 s with the cache.
$(VENV)/.installed: $(UV) uv.lock pyproject.toml libs/common/pyproject.toml services/*/pyproject.toml
	$(UV) sync --frozen --all-packages --compile-bytecode
	@touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/tierflow run

migrate: install
	$(VENV)/bin/tierflow migrate

topics: install
	$(VENV)/bin/tierflow topics

schemas: install
	$(VENV)/bin/tierflow schemas --out docs/schemas --asyncapi docs/asyncapi.yaml

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/common/src services/ingest/src services/classifier/src services/notifier/src services/console/src tests bench scripts

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Two test processes (pytest-xdist, a file's tests together): most tests wait on servers they
# started, so two keep the 2-core machine busy where one leaves it half idle.
TEST_WORKERS ?= 2
test: install lint browser
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile

# Debian's Chromium for the console's browser tests (unpacked under .tools when not installed).
browser:
	@scripts/install-chromium.sh >/dev/null

test-unit: install
	$(VENV)/bin/pytest tests/unit

test-integration: install
	$(VENV)/bin/pytest tests/integration tests/e2e

# The full forms of the fault scenarios (their short forms run in `make test`); each writes its
# result to var/chaos/<run>.json and docs/reliability.md's table is rebuilt from it.
chaos: install
	@run=$$(date -u +%Y%m%dT%H%M%SZ); \
	TIERFLOW_CHAOS=1 TIERFLOW_CHAOS_RUN=$$run $(VENV)/bin/pytest tests/chaos -m chaos --timeout=1800; \
	status=$$?; \
	$(VENV)/bin/python -m tests.chaos.report var/chaos/$$run.json docs/reliability.md; \
	exit $$status

validate-churn: install
	$(VENV)/bin/python scripts/churn_validation.py

bench: install
	$(VENV)/bin/python -m bench

bench-quick: install
	$(VENV)/bin/python -m bench --quick

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
