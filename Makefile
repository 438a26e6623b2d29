# dfscan: the few commands people need. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help setup test test-slow lint docs bench bench-scan bench-system bench-observability bench-delivery faults flower

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup:  ## create .venv with torch 2.13.0 (CPU, from local disk) and dfscan in editable mode, every extra
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev,docs]'

test:  ## lint, type-check and run the default suite (unit, integration, e2e; not the slow ones)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -m "not slow"

test-slow:  ## the long scenarios (faults, training queue, each extra in a fresh venv, ...)
	$(PY) -m pytest -m slow

docs:  ## build the manual (docs/ -> site/) with mkdocs --strict: broken links and anchors fail
	$(VENV)/bin/python -c "import material" 2>/dev/null || $(VENV)/bin/pip install -q 'mkdocs-material>=9.5,<10'
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

lint:  ## ruff and mypy only
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

bench:  ## in-process benchmark: transformers pipeline() vs dfscan scan() vs model-only forward
	$(PY) -m bench.core

bench-scan:  ## whole-process benchmark: `dfscan scan FOLDER` vs transformers pipeline(), A B A B pairs
	$(PY) -m bench.scan_vs_seed

bench-system:  ## whole-system benchmark: submit -> Redis -> worker -> Postgres
	$(PY) -m bench.system

bench-observability:  ## cost of metrics + webhooks (paired runs) and verdict-to-webhook latency
	$(PY) -m bench.observability

bench-delivery:  ## CPU per webhook delivery (deliverer vs receiver vs Postgres), statements per round
	$(PY) -m bench.delivery

faults:  ## run every fault scenario and print the table of docs/faults.md
	$(PY) -m bench.faults

flower:  ## Flower on 127.0.0.1:5555, basic auth on every path (set DFSCAN_FLOWER_PASSWORD first)
	$(VENV)/bin/dfscan flower
