# lakeloop — every target sets up what it needs; `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
STATE  ?= .lakeloop

.PHONY: run test test-all lint bench up down status clean install

install: $(STAMP)

# torch first, pinned to the CPU wheel: a looser torch requirement resolved by
# another package would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)  ## start the embedded stack, run the loop as far as it exists, stop the stack
	$(VENV)/bin/lakeloop demo --state-dir $(STATE)

test: $(STAMP)  ## the default suite (a few minutes on 2 cores)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/training.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/gpu_train.py

up: $(STAMP)
	$(VENV)/bin/lakeloop dev up --state-dir $(STATE)

down: $(STAMP)
	$(VENV)/bin/lakeloop dev down --state-dir $(STATE)

status: $(STAMP)
	$(VENV)/bin/lakeloop dev status --state-dir $(STATE)

clean:
	-$(VENV)/bin/lakeloop dev down --state-dir $(STATE) 2>/dev/null
	rm -rf $(STATE) .pytest_cache .ruff_cache
