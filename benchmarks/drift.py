"""Drift detection, side by side: lakeloop.drift against Evidently's DataDriftPreset on the same frames.

1M reference rows x 20 features (14 numeric of assorted shapes, 6 categorical) against a 1M-row
window in which exactly 5 columns were shifted (3 numeric, 2 categorical). Reports the time of a
full comparison (lakeloop: build the reference + compare; Evidently: its report), the time of a
new window against lakeloop's cached reference, lakeloop's extra memory for that (numpy and
Arrow peaks), and which columns each flags: they must be exactly the shifted ones.

Usage: python benchmarks/drift.py [--rows 1000000]   (Evidently runs from .venv-evidently)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

from lakeloop.drift import Reference  # noqa: E402

EVIDENTLY_PYTHON = ROOT / ".venv-evidently" / "bin" / "python"
SHIFTED = {"n0", "n5", "n9", "c1", "c4"}


class PeakMemory:
    """Peak extra memory while the block runs: numpy's allocations (tracemalloc) plus Arrow's memory
    pool (sampled every 2 ms). RSS would hide temporaries that reuse memory the process holds."""

    def __enter__(self) -> PeakMemory:
        self._arrow_base = self._arrow_peak = pa.total_allocated_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        tracemalloc.start()
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._arrow_peak = max(self._arrow_peak, pa.total_allocated_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        _, numpy_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        self.growth = numpy_peak + self._arrow_peak - self._arrow_base


def frame(rows: int, seed: int, shifted: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    columns = {}
    for i in range(14):
        kind = i % 4
        if kind == 0:
            values = rng.normal(10 * i, 1 + i, rows)
        elif kind == 1:
            values = rng.lognormal(1 + i / 10, 0.5, rows)
        elif kind == 2:
            values = rng.exponential(2 + i, rows)
        else:
            values = rng.integers(0, 50 + i, rows).astype(np.float64)
        columns[f"n{i}"] = values
    for i in range(6):
        k = 5 + 8 * i
        weights = np.arange(1, k + 1, dtype=np.float64)
        columns[f"c{i}"] = rng.choice([f"v{j}" for j in range(k)], rows, p=weights / weights.sum())
    if shifted:
        columns["n0"] = columns["n0"] + 0.5  # half a standard deviation
        columns["n5"] = columns["n5"] * 1.5
        columns["n9"] = rng.lognormal(1.9 + 0.4, 0.5, rows)
        columns["c1"] = np.where(rng.random(rows) < 0.2, "new-value", columns["c1"])  # an unseen category
        k = 5 + 8 * 4
        columns["c4"] = rng.choice([f"v{j}" for j in range(k)], rows)  # reweighted: uniform
    return pd.DataFrame(columns)


def arrays(df: pd.DataFrame) -> dict[str, pa.ChunkedArray]:
    """Arrow columns: how windows reach lakeloop (parquet inference logs); converted before timing."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    return {c: table.column(c) for c in table.column_names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    reference_df, current_df = frame(args.rows, 1, False), frame(args.rows, 2, True)
    reference, current = arrays(reference_df), arrays(current_df)

    started = time.perf_counter()
    built = Reference.build(reference)
    report = built.compare(current)
    full = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        cached = Reference.load(built.save(Path(tmp)))
        with PeakMemory() as memory:
            started = time.perf_counter()
            again = cached.compare(current)
            window = time.perf_counter() - started
        peak = memory.growth
        assert again.drifted == report.drifted
        evidently = None
        if EVIDENTLY_PYTHON.exists():
            reference_df.to_parquet(Path(tmp) / "reference.parquet")
            current_df.to_parquet(Path(tmp) / "current.parquet")
            out = subprocess.run([str(EVIDENTLY_PYTHON), str(ROOT / "benchmarks" / "_evidently_runner.py"),
                                  str(Path(tmp) / "reference.parquet"), str(Path(tmp) / "current.parquet")],
                                 capture_output=True, text=True, check=True).stdout
            evidently = json.loads(out.strip().splitlines()[-1])
        else:
            print(f"note: {EVIDENTLY_PYTHON} is missing (`make bench-tools` builds it): Evidently skipped")
    print(f"{args.rows:,} reference rows x 20 features vs a {args.rows:,}-row window, 5 columns shifted")
    print(f"  lakeloop full comparison (build reference + compare): {full:6.2f} s")
    print(f"  lakeloop new window, cached reference:               {window:6.2f} s, "
          f"extra memory {peak / 2**30:.2f} GiB")
    verdict = "exactly the shifted columns" if set(report.drifted) == SHIFTED else "NOT the shifted columns"
    print(f"  lakeloop flags {sorted(report.drifted)}: {verdict}")
    if evidently:
        print(f"  Evidently DataDriftPreset:                           {evidently['seconds']:6.2f} s, "
              f"peak RSS growth {evidently['peak_growth_mb'] / 1024:.2f} GiB")
        print(f"  Evidently flags {evidently['drifted']}")
        print(f"  full comparison: lakeloop is {evidently['seconds'] / full:.1f}x faster than Evidently; "
              f"a cached-reference window {evidently['seconds'] / window:.0f}x")
    result = {"rows": args.rows, "full_s": full, "window_s": window, "window_peak_bytes": peak,
              "drifted": sorted(report.drifted), "evidently": evidently}
    out_dir = ROOT / "benchmarks" / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "drift.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
