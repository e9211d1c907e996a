# lakeloop — every target sets up what it needs; `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
STATE  ?= .lakeloop

.PHONY: run test test-all lint bench bench-tools kserve up down status clean install proto

FRONT   = lakeloop/serving/.front-built

install: $(STAMP) $(FRONT)

# torch first, pinned to the CPU wheel: a looser torch requirement resolved by
# another package would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# the model server's compiled parts (HTTP front, V2 parser), rebuilt in place when their source changes (pip built them once)
$(FRONT): lakeloop/serving/_front.c lakeloop/serving/_tensors.c $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace
	touch $(FRONT)

run: $(STAMP) $(FRONT)  ## start the embedded stack, run the whole loop through its triggers, stop the stack
	$(VENV)/bin/lakeloop demo --project examples/fraud --state-dir $(STATE)

test: $(STAMP) $(FRONT)  ## the quick suite: everything but the tests marked slow (about 15 minutes on 2 cores)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -m "not slow" -q --durations=15

test-all: $(STAMP) $(FRONT)  ## every test, the end-to-end stacks included (what CI runs; about 35 minutes)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=15

proto: $(STAMP)  ## regenerate the gRPC messages (lakeloop/serving/_inference_pb2.py) from lakeloop/serving/proto
	$(PY) lakeloop/serving/proto/generate.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP) bench-tools
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/training.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/drift.py
	$(PY) benchmarks/loop.py
	$(PY) benchmarks/quality.py
	$(PY) benchmarks/gpu_train.py

# wrk and h2load (Debian packages) drive the serving benchmark; KServe and Evidently get venvs of their own
# (KServe 0.21 pins pandas < 3 and psutil < 6, below lakeloop's; Evidently 0.7 needs pandas < 3).
bench-tools: kserve
	command -v wrk >/dev/null && command -v h2load >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq wrk nghttp2-client)
	test -x .venv-evidently/bin/python || ($(PYTHON) -m venv .venv-evidently && \
		.venv-evidently/bin/pip install --quiet "evidently==0.7.23" "pandas<3" pyarrow)

kserve: .venv-kserve/.installed  ## KServe 0.21 in a venv of its own: the serving benchmark's rival, and its clients' test

.venv-kserve/.installed:
	$(PYTHON) -m venv .venv-kserve
	.venv-kserve/bin/pip install --quiet "kserve==0.21.0" "onnxruntime>=1.32"
	touch $@

up: $(STAMP)
	$(VENV)/bin/lakeloop dev up --state-dir $(STATE)

down: $(STAMP)
	$(VENV)/bin/lakeloop dev down --state-dir $(STATE)

status: $(STAMP)
	$(VENV)/bin/lakeloop dev status --state-dir $(STATE)

clean:
	-$(VENV)/bin/lakeloop dev down --state-dir $(STATE) 2>/dev/null
	rm -rf $(STATE) .pytest_cache .ruff_cache
