"""Evidently's data-drift report on two parquet files; prints seconds, peak RSS growth and drifted columns.

Runs in its own virtual environment (`make bench-tools` builds .venv-evidently: Evidently 0.7 needs
pandas < 3, lakeloop uses pandas 3). Usage: python _evidently_runner.py REFERENCE.parquet CURRENT.parquet
"""

from __future__ import annotations

import json
import resource
import sys
import time

import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset

reference, current = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
result = Report([DataDriftPreset()]).run(current, reference).dict()
seconds = time.perf_counter() - started
drifted = [m["config"]["column"] for m in result["metrics"]
           if m["config"]["type"].endswith("ValueDrift") and m["value"] >= m["config"]["threshold"]]
peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"seconds": seconds, "drifted": sorted(drifted), "peak_growth_mb": peak_growth_mb}))
