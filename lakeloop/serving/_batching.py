"""Adaptive (Triton's "dynamic") batching: concurrent requests for one model version merged into one
ONNX Runtime call, the outputs split back per request.

A request joins its model's queue and waits. The queue runs when it holds `preferred_batch` rows, or
`max_delay_us` after its first request arrived; with a delay of 0 it runs as soon as the event loop
has handled what is already waiting (the requests whose bytes arrived together), adding no wait of
its own, and an HTTP request that is alone in the server skips the queue (its turn of the event loop
cost 5 to 9% of single-connection throughput, and nothing could have joined it). Requests are merged
only when that is exact: every input and output of the model has a free first (batch) dimension, and
the requests agree on every other dimension; anything else runs alone. One merged call is logged
once (its rows are the requests' rows), so batching also cuts the inference log's per-request work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lakeloop.serving._model import LoadedModel
from lakeloop.serving._protocol import InferRequest

Outputs = dict[str, np.ndarray]
Done = Callable[[Outputs | BaseException], None]  # a request's outputs, or the failure of its call


@dataclass(frozen=True)
class Batching:
    """`max_delay_us`: how long the first request of a batch may wait for others (0: none);
    `preferred_batch`: rows at which a batch runs at once; `max_batch`: the most rows one call takes."""

    max_delay_us: int = 0
    preferred_batch: int = 64
    max_batch: int = 1024


class Batcher:
    """One queue per served model name; `run` is awaited by the request handlers (HTTP and gRPC)."""

    def __init__(self, batching: Batching, record: Callable[[str, LoadedModel, InferRequest, Outputs], None]
                 ) -> None:
        self.batching = batching
        self._record = record
        self._queues: dict[str, list[tuple[LoadedModel, InferRequest, Done, bool]]] = {}
        self._rows: dict[str, int] = {}
        self._timers: dict[str, asyncio.Handle] = {}
        self.calls = self.requests = 0  # ORT calls made for how many requests (the merge ratio)

    @property
    def immediate(self) -> bool:
        """No wait (delay 0): a request alone in the server may run at once (`ran_alone`), as nothing could join it."""
        return self.batching.max_delay_us == 0

    def ran_alone(self) -> None:
        """Count a request that ran at once, a call of its own."""
        self.calls += 1
        self.requests += 1

    async def run(self, name: str, model: LoadedModel, request: InferRequest, log_it: bool) -> Outputs:
        future = asyncio.get_running_loop().create_future()
        self.submit(name, model, request, log_it, lambda result: _settle(future, result))
        return await future

    def submit(self, name: str, model: LoadedModel, request: InferRequest, log_it: bool, done: Done) -> None:
        """Queue the request; `done` gets its outputs (or the exception of its call) when its batch has run.
        The callback form costs no task per request (lakeloop's HTTP front uses it; `run` wraps it)."""
        queue = self._queues.setdefault(name, [])
        queue.append((model, request, done, log_it))
        self._rows[name] = self._rows.get(name, 0) + request.rows
        if self._rows[name] >= self.batching.preferred_batch:
            self._cancel_timer(name)
            self._flush(name)
        elif len(queue) == 1:
            loop = asyncio.get_running_loop()
            delay = self.batching.max_delay_us / 1e6
            self._timers[name] = loop.call_later(delay, self._flush, name) if delay else loop.call_soon(
                self._flush, name)

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _flush(self, name: str) -> None:
        self._timers.pop(name, None)
        queue = self._queues.pop(name, [])
        self._rows.pop(name, None)
        while queue:
            group, queue = self._take(queue)
            self._run_group(name, group)

    def _take(self, queue: list) -> tuple[list, list]:
        """The longest prefix of `queue` that one call can take: one model version, mergeable shapes, at
        most max_batch rows."""
        model, first, _, _ = queue[0]
        if not model.batchable:
            return queue[:1], queue[1:]
        tails = {n: a.shape[1:] for n, a in first.inputs.items()}
        rows, end = first.rows, 1
        for other_model, request, _, _ in queue[1:]:
            if (other_model is not model or rows + request.rows > self.batching.max_batch
                    or any(a.shape[1:] != tails[n] for n, a in request.inputs.items())):
                break
            rows += request.rows
            end += 1
        return queue[:end], queue[end:]

    def _run_group(self, name: str, group: list) -> None:
        model = group[0][0]
        self.calls += 1
        self.requests += len(group)
        try:
            if len(group) == 1:
                merged = group[0][1]
            else:
                requests = [request for _, request, _, _ in group]
                merged = InferRequest(None, {n: np.concatenate([r.inputs[n] for r in requests]) for n in model.inputs},
                                      sum(r.rows for r in requests), None, False)
            outputs = model.run(merged.inputs)
        except Exception as exc:  # ORT's own failure: every request of the call gets it
            for _, _, done, _ in group:
                done(exc)
            return
        logged_whole = all(log_it for _, _, _, log_it in group)
        if logged_whole:  # one record for the whole call
            self._record(name, model, merged, outputs)
        start = 0
        for _, request, done, log_it in group:
            end = start + request.rows
            mine = outputs if len(group) == 1 else {k: v[start:end] for k, v in outputs.items()}
            if log_it and not logged_whole:
                self._record(name, model, request, mine)
            done(mine)
            start = end


def _settle(future: asyncio.Future, result: Outputs | BaseException) -> None:
    if future.done():  # the client may have gone away (its handler cancelled)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)

