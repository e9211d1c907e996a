"""The drift benchmark keeps working (small sizes): it flags exactly the shifted columns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_drift_benchmark_flags_exactly_the_shifted_columns():
    result = subprocess.run([sys.executable, "benchmarks/drift.py", "--rows", "50000"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "exactly the shifted columns" in result.stdout
    report = json.loads((ROOT / "benchmarks" / "out" / "drift.json").read_text())
    assert report["drifted"] == ["c1", "c4", "n0", "n5", "n9"]
    if report["evidently"] is not None:  # with .venv-evidently (make bench-tools): the same verdict
        assert report["evidently"]["drifted"] == report["drifted"]
