"""Inference logs: every request's inputs, outputs, model version and time, batched into parquet.

Requests copy their values into per-column buffers (no I/O; a few µs a request). A background
thread turns those into Arrow tables every 50 ms and, every `interval` seconds (or sooner
when `max_rows` are waiting), writes one parquet object per model version to a sink: a lakeFS branch
(production; one commit per object, so a drift window is a list of commits) or a local directory
(edge/dev).

If the sink fails, the rows are kept and retried on the next tick; when more than `max_pending`
rows wait, the oldest are dropped and counted (`lakeloop_inference_log_dropped_rows`): logging
never blocks or fails a request.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import lakefs
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakeloop.data._lakefs import lakefs_errors, upload_stream

try:  # one request's columns into the log (and a string column's codes) in one C call
    from lakeloop.serving._tensors import append as _append
    from lakeloop.serving._tensors import codes as _codes
except ImportError:  # not built here: the same from a Python loop
    _append = _codes = None
try:  # the compiled front's busy polling stands aside while the writer works (see _front.c, spin)
    from lakeloop.serving._front import stand_aside as _stand_aside
except ImportError:
    _stand_aside = None

log = logging.getLogger("lakeloop.serving")


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


WRITER_NICE = 10  # the inference-log writer's niceness when it must catch up; see background_priority


def background_priority(nice: int = 19) -> None:
    """Lower the calling thread's CPU priority (Linux: per-thread nice; elsewhere this does nothing).

    A server pinned to few CPUs shares them with its background threads; at normal priority the
    kernel lets such a thread run out its time slice while a request waits (measured: a p99 six
    times higher with inference logging on). At a positive niceness a waking request thread preempts
    it sooner. The model watcher runs at 19 (the least share of a saturated CPU: it polls). The
    inference-log writer runs at `WRITER_NICE` = 10 when it must catch up (see `idle_policy`): its
    work grows with the traffic, and at 19 (~1.5% of a saturated CPU) it fell behind under full load
    with 64-row requests and dropped 20 to 40% of the rows; at 10 it kept up (0 dropped).
    """
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def idle_policy(thread_id: int, idle: bool) -> bool:
    """Put a thread under SCHED_IDLE (it runs only on a CPU that nothing else of normal priority wants,
    and a waking request thread preempts it at once) or back to the normal policy at its niceness.
    False where that is not possible (not Linux, or not permitted): the thread keeps its policy.

    Why not a niceness alone: the kernel lets a running thread of any niceness finish its slice before a
    woken one runs (EEVDF's run-to-parity), so a request arriving while the log writer encoded parquet
    waited up to a few milliseconds (64-row requests at one connection: p99 1.5-1.9 ms with the writer
    at nice 10, 0.5-1.2 ms under SCHED_IDLE, 0.3-0.5 ms with logging off).
    """
    if idle and not _idle_is_reversible():
        return False
    policy = getattr(os, "SCHED_IDLE" if idle else "SCHED_OTHER", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(thread_id, policy, os.sched_param(0))
    except OSError:
        return False
    return True


@functools.cache
def _idle_is_reversible() -> bool:
    """Whether a thread of this process may leave SCHED_IDLE again. Linux lets it only with CAP_SYS_NICE or
    an RLIMIT_NICE that allows its niceness (an unprivileged container usually has neither); a writer that
    could not be given a normal share again would starve on a busy CPU, so there it keeps nice
    `WRITER_NICE`. Tried on a thread of its own, which then ends whatever the answer."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    answer = []

    def probe() -> None:
        me = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, me, WRITER_NICE)
            os.sched_setscheduler(me, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(me, os.SCHED_OTHER, os.sched_param(0))
            answer.append(True)

    thread = threading.Thread(target=probe, name="sched-idle-probe", daemon=True)
    thread.start()
    thread.join()
    return bool(answer)


STARVED_S = 1.0  # an idle-policy writer that has not finished a round in this long is given a normal share
HURRIED_S = 10.0  # and keeps it at least this long: a CPU that starved it once is likely busy still
STRING_SLICE = 256  # strings converted per step, holding the interpreter lock (~20 µs; see InferenceLogger)
SEGMENT_ROWS = 16_384  # rows per preallocated numeric segment


MAX_WIDENED = 64  # a [N, C] output up to this many entries becomes C columns (class probabilities)


class _Columns:
    """What one model version served since the last conversion, column by column.

    Numbers are copied into preallocated numpy segments (a full segment is followed by a new one,
    never copied) and strings are dictionary-encoded into them (a column's distinct values, each given
    a code as it first appears), so the request's own arrays are freed at once and the writer
    converts each column with a few C calls, doing no Python work per request or per row. Encoding a
    string costs the request ~40 ns; converting it to Arrow would cost the writer ~200 ns holding the
    interpreter lock, and the writer only converts each distinct value once.
    """

    __slots__ = ("at", "buffers", "codes", "dtypes", "filled", "plan", "room", "rows", "segments", "size", "sources",
                 "tensors")

    def __init__(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        # (which dict of the request, its key, the column name, the index in a row of several values) in
        # column order; a [N, C] output (class probabilities) becomes C columns output_<name>_<i>, and a
        # tensor of several values per row otherwise (an [N, 32] or [N, 3, 8, 8] input of any ONNX model)
        # one list column, row by row in row-major order
        self.sources = []
        self.tensors: dict[str, list[np.ndarray]] = {}
        for side, tensors in enumerate((inputs, outputs)):
            for k, array in tensors.items():
                column = f"output_{k}" if side else k
                if array.ndim <= 1 or array.shape[1:] == (1,):
                    self.sources.append((side, k, column, None))
                elif side and array.ndim == 2 and array.shape[1] <= MAX_WIDENED:
                    self.sources += [(side, k, f"{column}_{i}", i) for i in range(array.shape[1])]
                else:
                    self.sources.append((side, k, column, None))
                    self.tensors[column] = []
        self.dtypes: dict[str, np.dtype] = {}  # the segments' columns: numbers, and string codes (int32)
        self.codes: dict[str, dict[str, int]] = {}  # string column -> value -> code
        for side, key, column, _ in self.sources:
            array = (inputs, outputs)[side][key]
            if column in self.tensors:
                continue
            if array.dtype == object:
                self.codes[column] = {}
                self.dtypes[column] = np.dtype(np.int32)
            else:
                self.dtypes[column] = array.dtype
        self.segments: list[dict[str, np.ndarray]] = []
        # the compiled append's plan, (side, key, index, codes) a column, and the open segment's buffers in
        # its order; None where a column is a list (a tensor of several values a row): the Python loop
        self.plan = None if self.tensors or _append is None else tuple(
            (side, key, -1 if index is None else index, self.codes.get(column))
            for side, key, column, index in self.sources)
        self.buffers: tuple[np.ndarray, ...] = ()
        self.filled: list[int] = []
        self.room = self.size = 0
        self.at: list[float] = []
        self.rows: list[int] = []

    def append(self, at: float, rows: int, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        if rows > self.room:
            size = max(SEGMENT_ROWS, rows)
            self.segments.append({c: np.empty(size, dtype) for c, dtype in self.dtypes.items()})
            if self.plan is not None:
                self.buffers = tuple(self.segments[-1][column] for _, _, column, _ in self.sources)
            self.filled.append(0)
            self.room = size
        segment, start = self.segments[-1], self.filled[-1]
        end = start + rows
        sides = (inputs, outputs)
        if self.plan is None or not _append(self.plan, sides, self.buffers, start, rows):
            self._append(segment, start, rows, sides)
        self.filled[-1] = end
        self.room -= rows
        self.size += rows
        self.at.append(at)
        self.rows.append(rows)

    def _append(self, segment: dict[str, np.ndarray], start: int, rows: int, sides: tuple[dict, dict]) -> None:
        """`append`'s copy column by column: what the compiled one declines (list columns, other dtypes)."""
        end = start + rows
        tensors = self.tensors
        for side, key, column, index in self.sources:
            array = sides[side][key]
            if index is not None:
                array = array.reshape(rows, -1)[:, index]
            elif tensors and column in tensors:  # a copy: a binary request's arrays are views of its body
                tensors[column].append(array.reshape(rows, -1).copy())
                continue
            elif array.size != rows:
                raise ValueError(f"{key!r} has {array.size} values for {rows} rows (a free dimension changed size)")
            buffer = segment[column]
            codes = self.codes.get(column)
            if codes is not None:  # strings: their codes (a new value gets the next one)
                if rows == 1:
                    buffer[start] = codes.setdefault(array.item(0), len(codes))
                elif _codes is None or not _codes(array, codes, buffer, start):
                    buffer[start:end] = [codes.setdefault(value, len(codes)) for value in array.ravel().tolist()]
            elif rows == 1:
                buffer[start] = array.item(0)
            else:
                buffer[start:end] = array.ravel()

    def table(self, model: str, version: str) -> pa.Table:
        """One row per scored row: the raw inputs, `output_<name>`, served_at, model_name, model_version."""
        columns: dict[str, pa.ChunkedArray] = {}
        for _, _, column, _ in self.sources:
            if column in self.tensors:
                columns[column] = pa.chunked_array([_lists(self.tensors[column])])
                continue
            parts = [pa.array(segment[column][:filled]) for segment, filled in zip(self.segments, self.filled,
                                                                                      strict=True)]
            if column in self.codes:  # the distinct values, then each row's value looked up by its code
                values = _strings(list(self.codes[column]))
                parts = [pc.take(values, codes) for codes in parts]
                columns[column] = pa.chunked_array(parts, pa.string())
            else:
                columns[column] = pa.chunked_array(parts, pa.from_numpy_dtype(self.dtypes[column]))
        micros = (np.asarray(self.at) * 1e6).astype(np.int64)
        columns["served_at"] = pa.chunked_array([pa.array(np.repeat(micros, self.rows).astype("datetime64[us]"))])
        zeros = pa.array(np.zeros(self.size, np.int32))
        columns["model_name"] = pa.chunked_array([pa.DictionaryArray.from_arrays(zeros, [model])])
        columns["model_version"] = pa.chunked_array([pa.DictionaryArray.from_arrays(zeros, [version])])
        return pa.table(columns)


def _parquet(table: pa.Table) -> bytes:
    """`table` as one zstd parquet object. Only the string columns get a dictionary (numbers were hashed
    value by value for dictionaries rarely kept) and only `served_at`, which windows are cut by, gets
    statistics: a 500,000-row write costs about half as much this way (70 → 36 ms in process), CPU the
    server shares with requests (the p99 at 64 rows a request, one connection: 2.1 to 2.3 ms → 1.3 ms).
    It goes into an Arrow buffer, not a Python file object, whose every write call takes the
    interpreter lock (another thread waited up to 4 ms; 0.25 ms)."""
    strings = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_dictionary(f.type)]
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd", use_dictionary=strings, write_statistics=["served_at"])
    return buffer.getvalue().to_pybytes()


def _strings(values: list[str]) -> pa.Array:
    """Python strings as one Arrow array. Converting them holds the interpreter lock, so it goes in
    slices with a yield between them: a request arriving meanwhile waits one slice at most."""
    parts = []
    for start in range(0, len(values), STRING_SLICE):
        parts.append(pa.array(values[start:start + STRING_SLICE], pa.string()))
        time.sleep(0)
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def _lists(chunks: list[np.ndarray]) -> pa.ListArray:
    """[rows, width] arrays (width may differ between requests) as one list column, a list per row."""
    flat = np.concatenate([c.ravel() for c in chunks])
    widths = np.concatenate([np.full(c.shape[0], c.shape[1], np.int64) for c in chunks])
    offsets = np.concatenate([[0], np.cumsum(widths)])
    values = pa.array(flat, pa.string()) if flat.dtype == object else pa.array(flat)
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)


class InferenceLogger:
    """Batches inference records in memory and writes them from a background thread.

    The request path copies its values into per-column buffers (about 2 µs for a single row). Every
    `convert_every` seconds the writer thread swaps the buffers out and turns each column into
    Arrow with one C call, so it holds the interpreter only briefly; every `interval` seconds it
    writes what has accumulated as one parquet object per model version.

    Strings cannot be converted without holding the interpreter lock, so the distinct values go
    `STRING_SLICE` at a time with a yield between: a request that arrives mid-conversion waits for one
    slice at most. Measured under full load of 64-row JSON requests (3 string columns) on one CPU,
    against the same server with logging off: strings kept as Python objects and converted by the
    writer cost 33% of the throughput once the writer was given enough CPU to drop nothing;
    dictionary-encoded on the request path, 19%, and memory at the end of the run 283 MB instead of
    483 MB (150 MB with logging off). A second writer thread that took over at nice 10 only when
    the nice-19 one fell behind was tried and dropped: it waited on the starved thread's lock and
    still shed 12% of the rows.

    The writer runs under SCHED_IDLE (`idle_policy`): on a CPU with room it does its work between
    requests and never keeps one from the CPU. On a saturated CPU it would never run, so it gets a normal share
    at nice `WRITER_NICE` (`hurry`) when it has not finished a round for `STARVED_S` or the rows
    waiting pass a quarter of `max_pending` — checked by the request path and by the model watcher
    (`hurry_if_starved`), since a starved thread cannot check for itself — and goes back to the idle
    policy once it has caught up and `HURRIED_S` have passed. Measured with the serving benchmark's stack
    (lakeFS sink, 64-row JSON requests): going idle as soon as it had caught up, it was starved again
    with most of a write's rows waiting and shed 3-6% of them at eight connections; keeping its share
    for 10 s it shed none (25 s at eight connections), and the p99 at one connection was 0.9-1.7 ms
    against 2.0-2.8 ms with the writer at nice 10 throughout.
    """

    def __init__(self, sink: LakeFSSink | DirectorySink, interval: float = 10.0, max_rows: int = 500_000,
                 max_pending: int = 1_000_000, on_write: Callable[[str, int], None] | None = None,
                 convert_every: float = 0.05) -> None:
        self.sink, self.interval, self.max_rows, self.max_pending = sink, interval, max_rows, max_pending
        self.on_write, self.convert_every = on_write, convert_every
        self._open: dict[tuple[str, str], _Columns] = {}  # (model, version) -> columns being filled
        self._open_rows = 0
        self._converted: dict[tuple[str, str], list[tuple[pa.Table, float]]] = {}
        self._converted_rows = 0
        self.written_rows = 0
        self.dropped_rows = 0
        self.objects = 0
        self._swap = threading.Lock()  # request path vs the writer taking the open columns
        self._write = threading.Lock()  # the writer thread vs close()/flush() callers
        self._stop = threading.Event()
        self._flush_now = threading.Event()
        self._retry_at = 0.0  # after a failed write, no new try before then (no retry storm while lakeFS is down)
        self._writer_id = 0  # the writer thread's native id, once it runs
        self.idle = False  # whether the writer is under SCHED_IDLE now (see hurry)
        self._due_by = float("inf")  # when the writer, idle, counts as starved (time.time())
        self._hurried_until = 0.0  # a hurried writer keeps its normal share until then (HURRIED_S)
        self._thread = threading.Thread(target=self._loop, name="inference-log-writer", daemon=True)

    def start(self) -> None:
        # The first Arrow conversion initialises pyarrow's kernels (~250 ms): pay it now, not mid-traffic.
        inputs = {"n": np.zeros((1, 1), np.float32), "s": np.array([["x"]], object)}
        warm = _Columns(inputs, {"p": np.zeros(1, np.float32)})
        warm.append(0.0, 1, inputs, {"p": np.zeros(1, np.float32)})
        warm.table("warm-up", "0")
        self._thread.start()

    def record(self, model: str, version: str, rows: int, inputs: dict[str, np.ndarray],
               outputs: dict[str, np.ndarray]) -> None:
        """Called on the request path: copies the values into the open buffers."""
        with self._swap:
            if self._open_rows + self._converted_rows > self.max_pending:  # the writer cannot keep up
                self.dropped_rows += rows
                return
            columns = self._open.get((model, version))
            if columns is None:
                columns = self._open[(model, version)] = _Columns(inputs, outputs)
            at = time.time()
            columns.append(at, rows, inputs, outputs)
            self._open_rows += rows
            if self._starved(at) or (self.idle and self._open_rows > self.max_pending // 4):
                self.hurry()

    def hurry(self) -> None:
        """Give the writer a normal share of the CPU (at nice `WRITER_NICE`) until it has caught up."""
        self.idle = False
        self._hurried_until = time.time() + HURRIED_S
        idle_policy(self._writer_id, False)

    def hurry_if_starved(self) -> None:
        """For another thread of normal policy (the model watcher): `hurry` a writer that has not finished a
        round for `STARVED_S`, which happens only while no request comes (requests check it themselves)."""
        if self._starved(time.time()):
            self.hurry()

    def _starved(self, now: float) -> bool:
        """Whether the writer, under the idle policy, has not finished a round for `STARVED_S`."""
        return self.idle and now > self._due_by

    def _convert(self) -> None:
        with self._swap:
            taken, self._open, self._open_rows = self._open, {}, 0
        for key, columns in taken.items():
            table = columns.table(*key)
            self._converted.setdefault(key, []).append((table, columns.at[-1]))
            self._converted_rows += table.num_rows
            time.sleep(0)  # let the event loop run between models
        while self._converted_rows > self.max_pending:  # the sink is down for long: shed the oldest
            oldest = next(iter(self._converted))
            dropped, _ = self._converted[oldest].pop(0)
            self._converted_rows -= dropped.num_rows
            self.dropped_rows += dropped.num_rows
            if not self._converted[oldest]:
                del self._converted[oldest]

    def flush(self) -> int:
        """Write everything pending now; returns the rows written (a failed write is kept for retry)."""
        with self._write:
            self._convert()
            written = 0
            for key in list(self._converted):
                parts = self._converted[key]
                table = pa.concat_tables([t for t, _ in parts], promote_options="permissive")
                payload = _parquet(table)
                try:
                    where = self.sink.write(key[0], parts[-1][1], payload, table.num_rows, key[1])
                except Exception as exc:  # keep the rows for a later try; never let the thread die
                    self._retry_at = time.monotonic() + min(self.interval, 5.0)
                    log.warning("inference logs: could not write %d rows to %s (%s); retrying later",
                                table.num_rows, self.sink.describe(), exc)
                    continue
                del self._converted[key]
                self._converted_rows -= table.num_rows
                written += table.num_rows
                self.written_rows += table.num_rows
                self.objects += 1
                if self.on_write:
                    self.on_write(where, table.num_rows)
            return written

    def _loop(self) -> None:
        background_priority(WRITER_NICE)
        self._writer_id = threading.get_native_id()
        self._rest()
        next_write = time.monotonic() + self.interval
        while not self._stop.is_set():
            self._flush_now.wait(self.convert_every)
            if _stand_aside is not None:
                _stand_aside(True)
            try:  # the writer must outlive any one bad batch, or logging would stop for good
                with self._write:
                    self._convert()
                now = time.monotonic()
                if self._flush_now.is_set() or (now >= self._retry_at and (now >= next_write or
                                                                           self._converted_rows >= self.max_rows)):
                    self._flush_now.clear()
                    self.flush()
                    next_write = time.monotonic() + self.interval
            except Exception:
                log.exception("inference logs: the writer failed on a batch and goes on")
            finally:
                if _stand_aside is not None:
                    _stand_aside(False)
                self._rest()

    def _rest(self) -> None:
        """After a round: not starved until `STARVED_S` from now, and back under the idle policy once little
        waits (a tenth of a write's worth: a writer that was hurried catches up through its next write first)
        and `HURRIED_S` have passed since it was hurried."""
        with self._swap:
            self._due_by = time.time() + STARVED_S
            if (not self.idle and self._open_rows + self._converted_rows < self.max_rows // 10
                    and time.time() > self._hurried_until):
                self.idle = idle_policy(self._writer_id, True)

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stop.set()
        self._flush_now.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.flush()
