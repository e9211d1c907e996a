"""The inference log's writer (`InferenceLogger` into a `DirectorySink`): what is recorded comes back
from parquet exactly, strings included (dictionary-encoded in memory, plain strings on disk), across
segment boundaries and conversions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from lakeloop.serving import DirectorySink, InferenceLogger
from lakeloop.serving._logs import SEGMENT_ROWS, _idle_is_reversible

ROOT = Path(__file__).resolve().parents[2]


def test_recorded_rows_come_back_exactly(tmp_path):
    rng = np.random.default_rng(3)
    logger = InferenceLogger(DirectorySink(tmp_path), interval=3600)
    sent = []
    # a single row, a batch larger than a segment (a segment of its own), rows after it, and a
    # conversion in between: codes must never leak from one conversion or segment into another
    for i, rows in enumerate([1, SEGMENT_ROWS + 5, 7, 1, 300]):
        unique = np.array([f"id-{i}-{r}" for r in range(rows)], dtype=object)  # every value new
        few = np.array(rng.choice(["", "ä-ß", "🙂", "shop", "travel"], rows), dtype=object)
        amount = rng.standard_normal((rows, 1)).astype(np.float32)
        scores = rng.random((rows, 3)).astype(np.float32)
        label = np.array(rng.choice(["a", "b"], rows), dtype=object)
        logger.record("m", "1", rows, {"id": unique.reshape(rows, 1), "kind": few.reshape(rows, 1), "amount": amount},
                      {"scores": scores, "label": label})
        sent.append((unique, few, amount.ravel(), scores, label))
        if i == 2:
            logger._convert()  # what the writer thread does every 50 ms
    assert logger.flush() == sum(len(s[0]) for s in sent)
    table = ds.dataset([str(p) for p in tmp_path.rglob("*.parquet")]).to_table()
    assert table.schema.field("id").type == pa.string() and table.schema.field("output_label").type == pa.string()
    got = table.to_pydict()  # one object, rows in recording order
    unique, few, amount, scores, label = (np.concatenate(parts) for parts in zip(*sent, strict=True))
    assert got["id"] == unique.tolist()
    assert got["kind"] == few.tolist()
    assert got["output_label"] == label.tolist()
    np.testing.assert_array_equal(np.asarray(got["amount"], np.float32), amount)
    for k in range(3):
        np.testing.assert_array_equal(np.asarray(got[f"output_scores_{k}"], np.float32), scores[:, k])
    assert set(got["model_version"]) == {"1"}


class FlakySink(DirectorySink):
    """A directory that refuses writes until `until` (a sink whose lakeFS is down for a while)."""

    def __init__(self, root, until: float) -> None:
        super().__init__(root)
        self.until, self.attempts = until, 0

    def write(self, model, at, payload, rows, versions):
        self.attempts += 1
        if time.monotonic() < self.until:
            raise ConnectionError("lakeFS is down")
        return super().write(model, at, payload, rows, versions)


def one_row(logger: InferenceLogger, value: float) -> None:
    logger.record("m", "1", 1, {"x": np.array([[value]], np.float32), "s": np.array([["a"]], object)},
                  {"y": np.array([value], np.float32)})


def logged(root) -> list[float]:
    files = [str(p) for p in root.rglob("*.parquet")]
    return sorted(ds.dataset(files).to_table()["x"].to_pylist()) if files else []


def wait_for_rows(root, count: int, seconds: float = 15) -> list[float]:
    deadline = time.monotonic() + seconds
    while len(found := logged(root)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_rows_wait_for_a_failing_sink_without_a_retry_storm(tmp_path):
    sink = FlakySink(tmp_path, until=time.monotonic() + 1.5)
    logger = InferenceLogger(sink, interval=0.3, max_rows=5)  # more than max_rows waiting: written at once
    logger.start()
    try:
        for i in range(20):
            one_row(logger, float(i))
        assert wait_for_rows(tmp_path, 20) == [float(i) for i in range(20)] and logger.dropped_rows == 0
        # while it was down: a try every interval (0.3 s) or so, not one every 50 ms tick or every record
        assert sink.attempts <= 12, sink.attempts
    finally:
        logger.close()


def test_rows_beyond_max_rows_are_written_without_waiting_for_the_interval(tmp_path):
    logger = InferenceLogger(DirectorySink(tmp_path), interval=3600, max_rows=100)
    logger.start()
    try:
        for i in range(250):
            one_row(logger, float(i))
        assert len(wait_for_rows(tmp_path, 200)) >= 200  # the rest may wait for the interval (an hour)
    finally:
        logger.close()
    assert logged(tmp_path) == [float(i) for i in range(250)]  # close() writes what is left


WRITER_ON_A_BUSY_CPU = r"""
import json, os, subprocess, sys, time
from pathlib import Path
import numpy as np
from lakeloop.serving import DirectorySink, InferenceLogger

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one CPU for this process and the hog below
root = Path(sys.argv[1])
logger = InferenceLogger(DirectorySink(root), interval=0.2)
logger.start()
policy = lambda: os.sched_getscheduler(logger._thread.native_id)
inputs = {"x": np.arange(64, dtype=np.float32).reshape(64, 1), "s": np.array([["a"]] * 64, object)}
outputs = {"y": np.zeros(64, np.float32)}
logger.record("m", "1", 64, inputs, outputs)
time.sleep(0.5)
seen = {"calm": policy()}
hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # normal priority, same CPU, never sleeps
try:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and policy() != os.SCHED_OTHER:
        logger.record("m", "1", 64, inputs, outputs)
        time.sleep(0.0005)
    seen["busy"] = policy()
    written_by = time.monotonic() + 20
    while time.monotonic() < written_by and not logger.written_rows:
        time.sleep(0.05)
    seen["written"] = logger.written_rows
finally:
    hog.kill()
    hog.wait()
back_by = time.monotonic() + 20
while time.monotonic() < back_by and policy() != os.SCHED_IDLE:
    time.sleep(0.05)
seen["after"] = policy()
logger.close()
seen["dropped"] = logger.dropped_rows
print(json.dumps(seen))
"""


@pytest.mark.skipif(not _idle_is_reversible(),
                    reason="the idle policy is used only where the process may leave SCHED_IDLE again (Linux with "
                    "CAP_SYS_NICE or RLIMIT_NICE >= 10); elsewhere the writer keeps nice 10: no policy to switch")
def test_the_writer_yields_a_free_cpu_and_is_given_a_share_of_a_busy_one(tmp_path):
    """Calm, the writer runs under SCHED_IDLE (never ahead of a request); on a CPU that a process of normal
    priority keeps busy it would never run, so the request path gives it a normal share, it writes, and it
    goes back to the idle policy once it has caught up."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER_ON_A_BUSY_CPU)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "logs")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["calm"] == os.SCHED_IDLE, seen
    assert seen["busy"] == os.SCHED_OTHER and seen["written"] > 0, seen
    assert seen["after"] == os.SCHED_IDLE and seen["dropped"] == 0, seen
