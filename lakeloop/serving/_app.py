"""The HTTP face of the model server: Open Inference Protocol v2 REST, `/metrics`, a reload endpoint.

    GET  /v2/health/live, /v2/health/ready           open (Kubernetes probes; see `ModelServer.ready`)
    GET  /v2/models/{name}[/versions/{v}]/ready       open
    GET  /v2, /v2/models/{name}[/versions/{v}]       metadata               API key
    POST /v2/models/{name}[/versions/{v}]/infer       inference              API key
                                                      (logged for drift monitoring unless the request
                                                      says `Lakeloop-Log: skip`, as deploy smoke tests do)
    POST /v2/repository/index                         every model and state  API key (Triton's)
    POST /v2/repository/models/{name}/load            re-check the alias now API key
    GET  /metrics                                     Prometheus             API key

A plain ASGI application, no framework: the fixed set of routes is one dictionary lookup and one
split, headers are read straight from the scope, and the response is two `send` calls. A web
framework's routing, request and response objects cost about as much per request as parsing the
request and running the model together (measured: ~65 µs of ~115 µs in-process). Handlers call
ONNX Runtime inline: a small tabular model answers in tens of microseconds, less than a hop to a
thread pool would cost. Bad requests get 400 and `{"error": "..."}`; nothing a client sends can
produce a 500.

Bounds (`Limits`): a body above `max_body_bytes` is refused with 413 — from its Content-Length before a
byte is read, or as soon as what arrives passes the limit —, a body not complete `body_timeout_s`
after the head answers 408, a client that disconnects mid-body is dropped without an answer, and a
known path asked with the wrong method answers 405 with `Allow`. The head (request line and headers)
is bounded by the HTTP protocol itself (`lakeloop._uvicorn`).

The same app has a second door for lakeloop's compiled HTTP front (`_http`, the default layer):
`app.handle(conn, method, path, headers, body, alone)` per complete request, answered with
`conn.respond`, and `app.early(method, path, headers)` to refuse a large body from its head; the
front enforces the body bounds itself, with the same answers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Awaitable, Callable

import orjson

from lakeloop import __version__
from lakeloop._uvicorn import REQUESTS
from lakeloop.errors import LakeloopError
from lakeloop.serving import _protocol as v2
from lakeloop.serving._model import LoadedModel
from lakeloop.serving._server import ModelServer, ServedModel

log = logging.getLogger("lakeloop.serving")
JSON = b"application/json"
Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


class Answer:
    __slots__ = ("body", "headers", "rows", "status")

    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                 rows: int = 0) -> None:
        self.status, self.body, self.rows = status, body, rows
        self.headers = headers if headers is not None else [(b"content-type", JSON)]


def _json(body: object, status: int = 200) -> Answer:
    return Answer(status, orjson.dumps(body))


def _error(message: str, status: int) -> Answer:
    return Answer(status, v2.error_body(message))


UNAUTHORIZED = Answer(401, v2.error_body("missing or invalid API key: send 'Authorization: Bearer <key>'"),
                      [(b"content-type", JSON), (b"www-authenticate", b"Bearer")])


def _tune_interpreter() -> None:
    """Latency settings for a server process, measured with benchmarks/serving.py:

    - everything loaded at start-up (modules, the model) is moved out of the garbage collector's
      reach (`gc.freeze`): a full collection otherwise walks it all and stalls requests ~80 ms;
    - the interpreter hands over between threads every 1 ms instead of 5 ms, so the inference-log
      writer thread cannot keep a request waiting for long;
    - Arrow (the inference log's tables and parquet writes) allocates from the C library's heap, not
      its bundled jemalloc, whose background thread runs at normal priority and returns the memory of
      every written log object to the system while requests wait for the CPU: at 64 rows a request on
      one connection the p99 was 2.4-2.8 ms with jemalloc and 1.2-2.1 ms without, in interleaved runs
      (0.2-0.3 ms with no inference log at all).
    """
    import pyarrow

    gc.collect()
    gc.freeze()
    sys.setswitchinterval(0.001)
    pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def create_app(server: ModelServer, grpc_address: str | None = None):
    """The ASGI app serving `server`'s models; starts and stops its background work with the app (lifespan),
    and with `grpc_address` (host:port) the same models over gRPC in the same event loop."""
    metrics = server.metrics
    batcher = server.batcher

    def wrong_version(served: ServedModel, version: str | None) -> Answer | None:
        current = served.model.version if served.model else None
        if version is not None and version != current:
            return _error(f"{served.name} version {version!r} is not loaded (serving {current!r})", 404)
        return None

    # -- handlers: (headers, body, version, served model or None) -> Answer --------------------------

    def live(headers: dict, body: bytes, version: str | None, served: ServedModel | None) -> Answer:
        return _json({"live": True})

    def server_ready(headers: dict, body: bytes, version: str | None, served: ServedModel | None) -> Answer:
        is_ready = server.ready
        return _json({"ready": is_ready}, 200 if is_ready else 503)

    def model_ready(headers: dict, body: bytes, version: str | None, served: ServedModel) -> Answer:
        is_ready = served.model is not None and wrong_version(served, version) is None
        return _json({"ready": is_ready}, 200 if is_ready else 503)

    def server_metadata(headers: dict, body: bytes, version: str | None, served: ServedModel | None) -> Answer:
        return _json({"name": "lakeloop", "version": __version__,
                      "extensions": ["binary_tensor_data", "model_repository"]})

    def model_metadata(headers: dict, body: bytes, version: str | None, served: ServedModel) -> Answer:
        model = served.model
        if model is None:
            return _error(f"{served.name} is not loaded yet: {served.source.describe()} names no loadable version",
                          503)
        return wrong_version(served, version) or _json(model.metadata())

    def infer(headers: dict, body: bytes, version: str | None, served: ServedModel, alone: bool = False,
              reply: Callable[[Answer], None] | None = None) -> Answer | Awaitable[Answer] | None:
        """`alone`: no other request is in the server, so the batcher (if on and not waiting) has nobody to
        merge this one with: it runs at once, saving the event-loop turn a queue costs. With `reply`, a
        batched request is answered through it (and None returned) instead of by an awaitable."""
        model = served.model  # read once: a swap during this request does not affect it
        name = served.name
        if model is None:
            return _error(f"{name} is not loaded yet", 503)
        if version is not None and version != model.version:
            return _error(f"{name} version {version!r} is not loaded (serving {model.version!r})", 404)
        log_it = headers.get(b"lakeloop-log") != b"skip"  # deploy smoke tests skip the log
        try:
            split = headers.get(b"inference-header-content-length")
            request = v2.parse(body, split.decode("latin-1") if split else None, model.inputs, server.limits)
            if batcher is not None and not (alone and batcher.immediate):
                if reply is None:
                    return infer_batched(name, model, request, log_it)
                server.submit_batched(name, model, request, log_it, lambda result: reply(
                    failed_now(name, model, result) if isinstance(result, BaseException) else
                    answered(name, model, request, result)))
                return None
            outputs = server.infer(name, model, request, log_it)
        except Exception as exc:
            return failed(name, model, exc)
        return answered(name, model, request, outputs)

    async def infer_batched(name: str, model: LoadedModel, request: v2.InferRequest, log_it: bool) -> Answer:
        try:
            outputs = await server.infer_batched(name, model, request, log_it)
        except Exception as exc:
            return failed(name, model, exc)
        return answered(name, model, request, outputs)

    def answered(name: str, model: LoadedModel, request: v2.InferRequest, outputs: dict) -> Answer:
        payload, extra = v2.response(name, model.version, request, outputs, model.labels)
        return Answer(200, payload, extra, request.rows)

    def failed_now(name: str, model: LoadedModel, exc: BaseException) -> Answer:
        """`failed` for an exception that is not being handled (a batch's, passed to its callback)."""
        try:
            raise exc
        except Exception as raised:
            return failed(name, model, raised)

    def failed(name: str, model: LoadedModel, exc: Exception) -> Answer:
        """Called while handling `exc`: a client error is a 400; anything else passed every check (a 500)."""
        if isinstance(exc, v2.V2Error):
            return _error(str(exc), 400)
        log.exception("%s v%s: inference failed", name, model.version)
        return _error(f"inference failed: {exc}", 500)

    def render_metrics(headers: dict, body: bytes, version: str | None, served: ServedModel | None) -> Answer:
        logger = server.inference_log
        if logger is not None:
            metrics.gauges.update({"lakeloop_inference_log_written_rows": logger.written_rows,
                                   "lakeloop_inference_log_dropped_rows": logger.dropped_rows})
        if batcher is not None:  # requests / calls is how much adaptive batching merged
            metrics.gauges.update({"lakeloop_batcher_requests_total": batcher.requests,
                                   "lakeloop_batcher_calls_total": batcher.calls})
        return Answer(200, metrics.render().encode(), [(b"content-type", b"text/plain; version=0.0.4")])

    def index(headers: dict, body: bytes, version: str | None, served: ServedModel | None) -> Answer:
        """Triton's repository index: every model, its version and state."""
        listed = []
        for m in server.models.values():
            entry = {"name": m.name, "version": m.model.version if m.model else "",
                     "state": "READY" if m.model else "UNAVAILABLE"}
            if m.model is None:
                entry["reason"] = f"{m.source.describe()} names no loadable version yet"
            listed.append(entry)
        return _json(listed)

    async def load(headers: dict, body: bytes, version: str | None, served: str) -> Answer:
        try:
            result = await asyncio.to_thread(server.load, served)
        except LakeloopError as exc:
            known = server.models.get(served)
            current = known.model.version if known is not None and known.model else None
            return _json({"error": str(exc), "version": current}, 400)
        return _json({"name": served, **result})

    # -- routing: (method, path) -> (handler, needs an API key, version, model) ------------------------

    fixed = {("GET", "/v2/health/live"): (live, False), ("GET", "/v2/health/ready"): (server_ready, False),
             ("GET", "/v2"): (server_metadata, True), ("GET", "/metrics"): (render_metrics, True),
             ("POST", "/v2/repository/index"): (index, True)}
    fixed_paths = {path for _, path in fixed}
    per_model = {("GET", ""): (model_metadata, True), ("GET", "ready"): (model_ready, False),
                 ("POST", "infer"): (infer, True)}

    def unknown(name: str) -> Answer:
        return _error(f"unknown model {name!r}: this server serves {server.describe()}", 404)

    def not_allowed(method: str, path: str, allowed: list[str]) -> Answer:
        return Answer(405, v2.error_body(f"{method} is not allowed on {path}: use {' or '.join(allowed)}"),
                      [(b"content-type", JSON), (b"allow", ", ".join(allowed).encode())])

    def methods_of(table: dict, key: str) -> list[str]:
        return sorted(m for m, k in table if k == key)

    def route(method: str, path: str):
        """(handler, needs_key, version, served model) or an Answer for unknown paths."""
        found = fixed.get((method, path))
        if found is not None:
            return found[0], found[1], None, None
        if path in fixed_paths:
            return not_allowed(method, path, methods_of(fixed, path))
        parts = path.split("/")  # "", "v2", "models", NAME, [versions, V,] [ready|infer]
        if len(parts) < 4 or parts[1] != "v2" or parts[2] not in ("models", "repository"):
            return _error(f"no route {method} {path}", 404)
        if parts[2] == "repository":  # /v2/repository/models/NAME/load
            if len(parts) == 6 and parts[3] == "models" and parts[5] == "load":
                return (load, True, None, parts[4]) if method == "POST" else not_allowed(method, path, ["POST"])
            return _error(f"no route {method} {path}", 404)
        served = server.models.get(parts[3])
        if served is None:
            return unknown(parts[3])
        version = None
        rest = parts[4:]
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if len(rest) > 1:
            return _error(f"no route {method} {path}", 404)
        action = rest[0] if rest else ""
        found = per_model.get((method, action))
        if found is None:
            allowed = methods_of(per_model, action)
            return not_allowed(method, path, allowed) if allowed else _error(f"no route {method} {path}", 404)
        return found[0], found[1], version, served

    grpc_servers: list = []

    async def startup() -> None:
        """Load the models and start the background work (and the gRPC server): the lifespan's start."""
        await asyncio.to_thread(server.start)
        if grpc_address:
            from lakeloop.serving import _grpc

            grpc_servers.append(await _grpc.start(server, grpc_address))
        _tune_interpreter()

    async def shutdown() -> None:
        for grpc_server in grpc_servers:
            await grpc_server.stop(5)
        await asyncio.to_thread(server.close)

    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    limits = server.limits
    too_large = _error(f"request body larger than this server's limit of {limits.max_body_bytes:,} bytes "
                       "(lakeloop serve --max-body-bytes): split the batch", 413)

    async def read_body(headers: dict, receive: Receive) -> bytes | Answer | None:
        """The whole body; an Answer (413, 408) when it is too large or too slow; None if the client left.

        The time limit is a timer that cancels this task (about a microsecond to arm and disarm), not
        `asyncio.wait_for` around each message, which costs a task per call on Python 3.11."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            return too_large
        task = asyncio.current_task()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(limits.body_timeout_s, expire)
        chunks, size = [], 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limits.max_body_bytes:
                    return too_large
                if not message.get("more_body", False):
                    if not chunks:  # the usual case: the whole body in one message
                        return chunk
                    chunks.append(chunk)
                    return b"".join(chunks)
                chunks.append(chunk)
        except asyncio.CancelledError:
            if not expired:
                raise
            task.uncancel()
            return _error(f"request body not complete within {limits.body_timeout_s:g} s", 408)
        finally:
            timer.cancel()

    def alone(scope: dict) -> bool:
        """The only request in the server (known when it runs on lakeloop's uvicorn protocol)."""
        requests = scope.get("extensions", {}).get(REQUESTS)
        return requests is not None and len(requests) <= 1

    def admit(method: str, path: str, headers: dict):
        """The route of a request whose head has arrived, or the Answer refusing it (unknown path, wrong
        method, no API key): decided before a byte of the body is read."""
        routed = route(method, path)
        if isinstance(routed, Answer):
            return routed
        if routed[1] and not server.authorized((headers.get(b"authorization") or b"").decode("latin-1")):
            return UNAUTHORIZED
        return routed

    async def app(scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        routed = admit(scope["method"], scope["path"], headers)
        if isinstance(routed, Answer):
            reply = routed
        else:
            handler, _, version, served = routed
            body = await read_body(headers, receive)
            if body is None:  # the client went away: nobody to answer
                return
            if isinstance(body, Answer):
                reply = body
            else:
                reply = (infer(headers, body, version, served, alone(scope)) if handler is infer else
                         handler(headers, body, version, served))
                if not isinstance(reply, Answer):
                    reply = await reply
            if handler is infer:
                metrics.observe(served.name, reply.status, time.perf_counter() - started, reply.rows)
        await send({"type": "http.response.start", "status": reply.status,
                    "headers": [*reply.headers, (b"content-length", str(len(reply.body)).encode())]})
        await send({"type": "http.response.body", "body": reply.body})

    # -- lakeloop's compiled HTTP front (lakeloop.serving._http) calls these instead of the ASGI app ----

    pending: set[asyncio.Task] = set()

    def handle(conn, method: str, path: str, headers: dict, body: bytes, alone: bool) -> None:
        """A complete request from the front; answered now, through the batcher's callback, or by a task
        when the answer must wait (a model load)."""
        started = time.perf_counter()
        routed = admit(method, path, headers)
        if isinstance(routed, Answer):
            conn.respond(routed.status, routed.body, routed.headers)
            return
        handler, _, version, served = routed

        def respond(reply: Answer) -> None:
            if handler is infer:
                metrics.observe(served.name, reply.status, time.perf_counter() - started, reply.rows)
            conn.respond(reply.status, reply.body, reply.headers)

        reply = (infer(headers, body, version, served, alone, respond) if handler is infer else
                 handler(headers, body, version, served))
        if isinstance(reply, Answer):
            respond(reply)
        elif reply is not None:
            task = asyncio.ensure_future(finish(reply, respond))
            pending.add(task)
            task.add_done_callback(pending.discard)

    async def finish(reply: Awaitable[Answer], respond: Callable[[Answer], None]) -> None:
        respond(await reply)

    def early(method: str, path: str, headers: dict) -> tuple | None:
        """A request with a large or chunked body, before the body is read: None to read it, else the refusal."""
        routed = admit(method, path, headers)
        return (routed.status, routed.body, routed.headers) if isinstance(routed, Answer) else None

    app.startup, app.shutdown, app.handle, app.early, app.pending, app.limits = (startup, shutdown, handle, early,
                                                                                 pending, limits)
    app.server = server
    return app
