"""The serving benchmark keeps working: short runs, every server answering correctly, the swap check valid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (.ci/run and `make bench-tools` install it)")
def test_serving_benchmark_runs_and_the_swap_test_sees_every_answer():
    result = subprocess.run([sys.executable, "benchmarks/serving.py", "--duration", "1", "--swap-duration", "8",
                             "--connections", "1"], cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((ROOT / "benchmarks" / "out" / "serving.json").read_text())
    servers = {row["server"] for row in report["throughput"]}
    assert {"lakeloop", "naive FastAPI+torch"} <= servers
    assert all(row["non_2xx"] == 0 and row["socket_errors"] == 0 for row in report["throughput"])
    swap = report["swap"]
    assert swap["non_2xx"] == 0 and swap["socket_errors"] == 0 and swap["refused"] == 2
    assert sum(swap["versions"].values()) == swap["requests"]
    assert not {"3", "4"} & set(swap["versions"]) and {"1", "2"} <= set(swap["versions"])
    assert "lakeloop vs the others" in result.stdout
