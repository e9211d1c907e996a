"""The loop benchmark keeps working (one event per worker, no demo): each CI request starts a retrain run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_trigger_latency_benchmark_times_each_triggered_run():
    result = subprocess.run([sys.executable, "benchmarks/loop.py", "--events", "1", "--skip-demo"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ratio (default / dev stack)" in result.stdout
    report = json.loads((ROOT / "benchmarks" / "out" / "loop.json").read_text())["triggers"]
    for worker in ("dev_stack", "default"):
        [sample] = report[worker]
        assert 0 < sample["created_s"] < sample["running_s"]  # created by the automation, then started
