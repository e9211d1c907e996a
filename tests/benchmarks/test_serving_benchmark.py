"""The serving benchmark keeps working: short runs of every part, every server answering correctly in every
encoding it speaks (checked by the benchmark before it times a server), the swap check valid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("wrk") is None or shutil.which("h2load") is None,
                    reason="needs wrk and h2load (.ci/run and `make bench-tools` install them)")
def test_serving_benchmark_runs_and_the_swap_test_sees_every_answer():
    # the idle-latency knob needs root (/dev/cpu_dma_latency): exercised wherever it can be
    idle = ["--idle-latency-us", "0"] if os.access("/dev/cpu_dma_latency", os.W_OK) else []
    result = subprocess.run([sys.executable, "benchmarks/serving.py", "--duration", "1", "--swap-duration", "12",
                             "--connections", "1", *idle], cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((ROOT / "benchmarks" / "out" / "serving.json").read_text())
    assert report["idle_latency_us"] == (0 if idle else None)
    assert ("CPU idle wake-up latency held at 0 us" in result.stdout) == bool(idle)
    runs = report["throughput"]
    assert {"lakeloop", "floor", "naive FastAPI+torch"} <= {row["server"] for row in runs}
    cases = {(row["encoding"], row["batch"]) for row in runs if row["server"] == "lakeloop"}
    assert cases == {(e, b) for e in ("json", "binary", "grpc") for b in (1, 64)}
    assert cases == {(row["encoding"], row["batch"]) for row in runs if row["server"] == "floor"}
    assert all(row["non_2xx"] == 0 and row["socket_errors"] == 0 and row["requests"] > 0 for row in runs)
    assert {"lakeloop", "floor"} <= set(report["footprint"])
    assert all(f["rss_mb"] > 0 and f["start_s"] > 0 for f in report["footprint"].values())
    log = report["footprint"]["lakeloop"]["log"]  # production settings: every scored row logged, none shed
    assert log["scored"] > 0 and log["dropped"] == 0 and log["written"] <= log["scored"], log
    batching = report["batching"]
    assert len(batching) == 3 and all(row["non_2xx"] == 0 and row["requests"] > 0 for row in batching)
    swap = report["swap"]
    assert swap["non_2xx"] == 0 and swap["socket_errors"] == 0 and swap["refused"] == 2 and swap["swapped"] == 2
    assert sum(swap["versions"].values()) == swap["requests"]
    assert not {"3", "4"} & set(swap["versions"]) and {"1", "2"} <= set(swap["versions"])
    assert "lakeloop per case" in result.stdout and "batched (0 us) vs unbatched, 1 conn" in result.stdout
