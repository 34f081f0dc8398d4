# Thin targets over the project's own commands. `make help` lists them.
# Every target that needs Python sets up .venv itself (uv, from the lock file), so on a fresh
# machine `make demo` and `make test` are the only two commands needed.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
SL := $(VENV)/bin/stream-lstm
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements/dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check 'uv>=0.4,<1'
	$(UV) pip install --python $(PY) -q -r requirements/dev.lock
	$(UV) pip install --python $(PY) -q --no-deps -e .
	@touch $(STAMP)

.PHONY: venv
venv: $(STAMP) ## create .venv with the package and dev tools (from requirements/dev.lock)

.PHONY: lock
lock: $(STAMP) ## re-resolve requirements/dev.lock from pyproject.toml
	$(UV) pip compile --universal --python-version 3.11 pyproject.toml --extra dev -o requirements/dev.lock -q

.PHONY: lint
lint: $(STAMP) ## ruff lint + format check, mypy, the layer contracts (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: docs
docs: $(STAMP) ## write the worker's settings table into README.md from stream_lstm/config.py
	$(PY) -m stream_lstm.commands._settings README.md

.PHONY: fmt
fmt: $(STAMP) ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

.PHONY: system-deps
system-deps: ## Debian packages the tests use (redis-server, docker-compose, prometheus + promtool, chromium), if missing
	@deploy/local/ensure-debian-packages.sh redis-server:redis-server docker-compose:docker-compose promtool:prometheus prometheus:prometheus chromium:chromium

.PHONY: test
test: lint system-deps ## lint, then every test (unit + integration on a real Kafka broker and Redis the tests start)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: $(STAMP) system-deps ## unit tests only (no network)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-chaos
test-chaos: $(STAMP) system-deps ## only the fault tests (kill -9, zombie, Redis and broker restarts); part of `make test`
	$(PY) -m pytest -m chaos $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: $(STAMP) system-deps ## integration tests only (real Kafka + Redis)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

.PHONY: bench
bench: $(STAMP) system-deps ## the benchmark suite on a local stack it starts (30-60 min on 2 cores); JSON in bench/results, see docs/benchmarks.md
	$(SL) bench --out bench/results

# The examples' own environment (docs/api.md#examples): the built wheel plus
# requirements/examples.lock (quixstreams, bytewax), both with --no-deps; the same commands as
# tests/integration/test_examples.py. Re-locking: see the header of requirements/examples.in.
EXAMPLES_ENV ?= build/examples-env
.PHONY: examples-env
examples-env: $(STAMP) ## build the wheel (dist/) and the examples' environment (build/examples-env) from requirements/examples.lock
	rm -f dist/stream_lstm-*.whl
	$(UV) build --wheel -q -o dist
	rm -rf $(EXAMPLES_ENV)
	$(UV) venv -q $(EXAMPLES_ENV) --python $(PY)
	$(UV) pip install -q --python $(EXAMPLES_ENV)/bin/python --no-deps -r requirements/examples.lock
	$(UV) pip install -q --python $(EXAMPLES_ENV)/bin/python --no-deps dist/stream_lstm-*.whl
	$(UV) pip check --python $(EXAMPLES_ENV)/bin/python
	cd / && $(CURDIR)/$(EXAMPLES_ENV)/bin/stream-lstm --version
	@echo "examples: $(EXAMPLES_ENV)/bin/python examples/kafka_forecaster.py --help (docs/api.md#examples)"

.PHONY: demo
demo: $(STAMP) ## run the demo on the local stack, then stop what it started
	$(SL) demo

.PHONY: stack-up stack-down stack-status
stack-up: $(STAMP) ## start the local Kafka broker and Redis
	$(SL) stack up
stack-down: $(STAMP) ## stop them by PID
	$(SL) stack down
stack-status: $(STAMP) ## address, PID and RSS of each
	$(SL) stack status

.PHONY: clean
clean: ## remove the venv and build outputs (not the cached Kafka jars)
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
