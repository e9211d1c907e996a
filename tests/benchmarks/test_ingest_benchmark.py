"""`make bench` keeps working: the ingest benchmark runs end to end on a small size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ingest_benchmark_runs_and_reports_ratios(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "benchmarks/ingest.py", "--rows", "20000", "--repeat", "1",
                             "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for label in ("hand-written", "pandera 2 threads", "lakeFS upload", "lakeFS download", "ingest path peak"):
        assert label in result.stdout
    figures = json.loads(out.read_text())["20000"]
    assert figures["validation"]["ratio_pandera_2t_vs_hand"] > 0
    assert figures["transfer"]["upload_mb_s"] > 0 and figures["memory"]["passed"] is True
