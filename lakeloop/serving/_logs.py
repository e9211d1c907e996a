"""Inference logs: every request's inputs, outputs, model version and time, batched into parquet.

Requests only append references to their arrays to an in-memory list (no copy, no I/O). A
background thread swaps the list out every `interval` seconds (or sooner when `max_rows` are
waiting), builds one parquet object and writes it to a sink: a lakeFS branch (production; one
commit per object, so a drift window is a list of commits) or a local directory (edge/dev).

If the sink fails, the batch is kept and retried on the next tick; when more than `max_pending`
rows wait, the oldest are dropped and counted (`lakeloop_inference_log_dropped_rows`): logging
never blocks or fails a request.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lakefs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lakeloop.data._lakefs import lakefs_errors, upload_stream

log = logging.getLogger("lakeloop.serving")


@dataclass
class _Entry:
    at: float
    model: str
    version: str
    rows: int
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def object_path(prefix: str, model: str, at: float) -> str:
    """`<prefix>/<model>/date=YYYY-MM-DD/<HHMMSS>-<unique>.parquet`: drift monitoring lists by date."""
    stamp = time.gmtime(at)
    return (f"{prefix}/{model}/date={time.strftime('%Y-%m-%d', stamp)}/"
            f"{time.strftime('%H%M%S', stamp)}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet")


class LakeFSSink:
    """Parquet objects committed to a lakeFS branch (created from `source_branch` if missing)."""

    def __init__(self, client: lakefs.Client, repository: str, branch: str = "inference-logs",
                 prefix: str = "inference", source_branch: str = "main", storage_namespace: str | None = None) -> None:
        self.client, self.repository, self.branch, self.prefix = client, repository, branch, prefix
        self.source_branch = source_branch
        self.namespace = storage_namespace or f"local://lakeloop/{repository}"
        self._ready = False

    def describe(self) -> str:
        return f"lakefs://{self.repository}/{self.branch}/{self.prefix}/"

    def _prepare(self) -> None:
        repo = lakefs.Repository(self.repository, client=self.client)
        with lakefs_errors(self.client.config.host, f"opening {self.describe()}"):
            repo.create(storage_namespace=self.namespace, default_branch=self.source_branch, exist_ok=True)
            repo.branch(self.branch).create(self.source_branch, exist_ok=True)
        self._ready = True

    def write(self, model: str, at: float, payload: bytes, rows: int, versions: str) -> str:
        if not self._ready:
            self._prepare()
        path = object_path(self.prefix, model, at)
        with lakefs_errors(self.client.config.host, f"writing inference logs to {self.describe()}"):
            upload_stream(self.client, self.repository, self.branch, path, io.BytesIO(payload),
                          content_type="application/vnd.apache.parquet")
            lakefs.Repository(self.repository, client=self.client).branch(self.branch).commit(
                f"inference log: {rows} rows of {model}",
                metadata={"model": model, "model_versions": versions, "rows": str(rows), "source": "lakeloop-serve"})
        return path


class DirectorySink:
    """Parquet files in a local directory, same layout (for `--onnx` serving without lakeFS)."""

    def __init__(self, root: Path, prefix: str = "inference") -> None:
        self.root, self.prefix = root, prefix

    def describe(self) -> str:
        return f"{self.root}/{self.prefix}/"

    def write(self, model: str, at: float, payload: bytes, rows: int, versions: str) -> str:
        path = self.root / object_path(self.prefix, model, at)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(payload)
        partial.replace(path)
        return str(path)


def to_table(entries: list[_Entry]) -> pa.Table:
    """One row per scored row: the raw inputs, `output_<name>`, served_at, model_name, model_version."""
    columns: dict[str, pa.Array] = {}
    for name in entries[0].inputs:
        columns[name] = pa.array(np.concatenate([e.inputs[name].reshape(-1) for e in entries]))
    for name in entries[0].outputs:
        columns[f"output_{name}"] = pa.array(np.concatenate([e.outputs[name].reshape(-1) for e in entries]))
    counts = [e.rows for e in entries]
    columns["served_at"] = pa.array(np.repeat([int(e.at * 1e6) for e in entries], counts).astype("datetime64[us]"))
    columns["model_name"] = pa.array(np.repeat([e.model for e in entries], counts)).dictionary_encode()
    columns["model_version"] = pa.array(np.repeat([e.version for e in entries], counts)).dictionary_encode()
    return pa.table(columns)


class InferenceLogger:
    """Batches inference records in memory and writes them from a background thread."""

    def __init__(self, sink: LakeFSSink | DirectorySink, interval: float = 10.0, max_rows: int = 50_000,
                 max_pending: int = 1_000_000, on_write: Callable[[str, int], None] | None = None) -> None:
        self.sink, self.interval, self.max_rows, self.max_pending = sink, interval, max_rows, max_pending
        self.on_write = on_write
        self._entries: list[_Entry] = []
        self._pending_rows = 0
        self.written_rows = 0
        self.dropped_rows = 0
        self.objects = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # uncontended but for the writer's swap: ~50 ns per request
        self._thread = threading.Thread(target=self._loop, name="inference-log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self, model: str, version: str, rows: int, inputs: dict[str, np.ndarray],
               outputs: dict[str, np.ndarray]) -> None:
        """Called on the request path: an append, nothing more (the arrays are not copied)."""
        entry = _Entry(time.time(), model, version, rows, inputs, outputs)
        with self._lock:
            self._entries.append(entry)
            self._pending_rows += rows
        if self._pending_rows >= self.max_rows:
            self._wake.set()

    def _take(self) -> list[_Entry]:
        with self._lock:
            entries, self._entries = self._entries, []
            self._pending_rows = 0
        return entries

    def flush(self) -> int:
        """Write everything pending now; returns the rows written (0 if the sink failed: kept for retry)."""
        entries = self._take()
        if not entries:
            return 0
        groups: dict[tuple[str, tuple[str, ...]], list[_Entry]] = {}
        for e in entries:  # one object per model and input layout (a swap may change the inputs)
            groups.setdefault((e.model, tuple(e.inputs)), []).append(e)
        written = 0
        for (model, _), group in groups.items():
            rows = sum(e.rows for e in group)
            buffer = io.BytesIO()
            pq.write_table(to_table(group), buffer, compression="zstd")
            versions = ",".join(sorted({e.version for e in group}))
            try:
                where = self.sink.write(model, group[-1].at, buffer.getvalue(), rows, versions)
            except Exception as exc:  # keep the rows for the next tick; never let the thread die
                log.warning("inference logs: could not write %d rows to %s (%s); retrying later",
                            rows, self.sink.describe(), exc)
                self._requeue(group)
                continue
            written += rows
            self.written_rows += rows
            self.objects += 1
            if self.on_write:
                self.on_write(where, rows)
        return written

    def _requeue(self, group: list[_Entry]) -> None:
        with self._lock:
            self._entries[:0] = group
            self._pending_rows += sum(e.rows for e in group)
            while self._pending_rows > self.max_pending and self._entries:
                dropped = self._entries.pop(0)
                self._pending_rows -= dropped.rows
                self.dropped_rows += dropped.rows

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.flush()
