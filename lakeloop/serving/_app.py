"""The HTTP face of the model server: Open Inference Protocol v2 REST, `/metrics`, a reload endpoint.

    GET  /v2/health/live, /v2/health/ready           open (Kubernetes probes)
    GET  /v2/models/{name}[/versions/{v}]/ready       open
    GET  /v2, /v2/models/{name}[/versions/{v}]       metadata               API key
    POST /v2/models/{name}[/versions/{v}]/infer       inference              API key
                                                      (logged for drift monitoring unless the request
                                                      says `Lakeloop-Log: skip`, as deploy smoke tests do)
    POST /v2/repository/models/{name}/load            re-check the alias now API key
    GET  /metrics                                     Prometheus             API key

A plain ASGI application, no framework: the fixed set of routes is one dictionary lookup and one
split, headers are read straight from the scope, and the response is two `send` calls. A web
framework's routing, request and response objects cost about as much per request as parsing the
request and running the model together (measured: ~65 µs of ~115 µs in-process). Handlers call
ONNX Runtime inline: a small tabular model answers in tens of microseconds, less than a hop to a
thread pool would cost. Bad requests get 400 and `{"error": "..."}`; nothing a client sends can
produce a 500.
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
from lakeloop.errors import LakeloopError
from lakeloop.serving import _protocol as v2
from lakeloop.serving._server import ModelServer

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
      writer thread cannot keep a request waiting for long.
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(0.001)


def create_app(server: ModelServer):
    """The ASGI app serving `server`; starts and stops its background work with the app (lifespan)."""
    name = server.name
    metrics = server.metrics

    def current_version() -> str | None:
        return server.model.version if server.model else None

    def wrong_version(version: str | None) -> Answer | None:
        if version is not None and version != current_version():
            return _error(f"{name} version {version!r} is not loaded (serving {current_version()!r})", 404)
        return None

    # -- handlers: (headers, body, version) -> Answer ------------------------------------------------

    def live(headers: dict, body: bytes, version: str | None) -> Answer:
        return _json({"live": True})

    def ready(headers: dict, body: bytes, version: str | None) -> Answer:
        is_ready = server.model is not None and wrong_version(version) is None
        return _json({"ready": is_ready}, 200 if is_ready else 503)

    def server_metadata(headers: dict, body: bytes, version: str | None) -> Answer:
        return _json({"name": "lakeloop", "version": __version__,
                      "extensions": ["binary_tensor_data", "model_repository"]})

    def model_metadata(headers: dict, body: bytes, version: str | None) -> Answer:
        model = server.model
        if model is None:
            return _error(f"{name} is not loaded yet: {server.source.describe()} names no loadable version", 503)
        return wrong_version(version) or _json(model.metadata())

    def infer(headers: dict, body: bytes, version: str | None) -> Answer:
        model = server.model  # read once: a swap during this request does not affect it
        if model is None:
            return _error(f"{name} is not loaded yet", 503)
        if version is not None and version != model.version:
            return _error(f"{name} version {version!r} is not loaded (serving {model.version!r})", 404)
        try:
            split = headers.get(b"inference-header-content-length")
            request = v2.parse(body, split.decode("latin-1") if split else None, model.inputs, server.max_batch)
            v2.check_outputs(request.outputs, model.outputs)
        except v2.V2Error as exc:
            return _error(str(exc), 400)
        try:
            outputs = model.run(request.inputs)
        except Exception as exc:  # not a client error: the inputs passed every check
            log.exception("%s v%s: inference failed", name, model.version)
            return _error(f"inference failed: {exc}", 500)
        if server.inference_log is not None and headers.get(b"lakeloop-log") != b"skip":  # deploy smoke tests skip
            server.inference_log.record(name, model.version, request.rows, request.inputs, outputs)
        payload, extra = v2.response(name, model.version, request, outputs)
        return Answer(200, payload, extra, request.rows)

    def render_metrics(headers: dict, body: bytes, version: str | None) -> Answer:
        logger = server.inference_log
        if logger is not None:
            metrics.gauges.update({"lakeloop_inference_log_written_rows": logger.written_rows,
                                   "lakeloop_inference_log_dropped_rows": logger.dropped_rows})
        return Answer(200, metrics.render().encode(), [(b"content-type", b"text/plain; version=0.0.4")])

    async def load(headers: dict, body: bytes, version: str | None) -> Answer:
        try:
            result = await asyncio.to_thread(server.refresh, True)
        except LakeloopError as exc:
            return _json({"error": str(exc), "version": current_version()}, 400)
        return _json({"name": name, **result})

    # -- routing: (method, path) -> (handler, needs an API key) --------------------------------------

    fixed = {("GET", "/v2/health/live"): (live, False), ("GET", "/v2/health/ready"): (ready, False),
             ("GET", "/v2"): (server_metadata, True), ("GET", "/metrics"): (render_metrics, True),
             ("POST", f"/v2/repository/models/{name}/load"): (load, True)}
    per_model = {("GET", ""): (model_metadata, True), ("GET", "ready"): (ready, False),
                 ("POST", "infer"): (infer, True)}

    def route(method: str, path: str):
        """(handler, needs_key, version) or an Answer for unknown paths."""
        found = fixed.get((method, path))
        if found is not None:
            return found[0], found[1], None
        parts = path.split("/")  # "", "v2", "models", NAME, [versions, V,] [ready|infer]
        if len(parts) < 4 or parts[1] != "v2" or parts[2] not in ("models", "repository"):
            return _error(f"no route {method} {path}", 404)
        if parts[2] == "repository" or parts[3] != name:
            model = parts[4] if parts[2] == "repository" and len(parts) > 4 else parts[3]
            return _error(f"unknown model {model!r}: this server serves {name!r}", 404)
        version = None
        rest = parts[4:]
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if len(rest) > 1:
            return _error(f"no route {method} {path}", 404)
        found = per_model.get((method, rest[0] if rest else ""))
        if found is None:
            return _error(f"no route {method} {path}", 404 if method in ("GET", "POST") else 405)
        return found[0], found[1], version

    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await asyncio.to_thread(server.start)
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                _tune_interpreter()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(server.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        routed = route(scope["method"], scope["path"])
        body = b""
        if isinstance(routed, Answer):
            answer = routed
        else:
            handler, needs_key, version = routed
            headers = dict(scope["headers"])
            if needs_key and not server.authorized((headers.get(b"authorization") or b"").decode("latin-1")):
                answer = UNAUTHORIZED
            else:
                more = True
                while more:  # the body may arrive in several messages
                    message = await receive()
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                answer = handler(headers, body, version)
                if not isinstance(answer, Answer):
                    answer = await answer
            if handler is infer:
                metrics.observe(name, answer.status, time.perf_counter() - started, answer.rows)
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [*answer.headers, (b"content-length", str(len(answer.body)).encode())]})
        await send({"type": "http.response.body", "body": answer.body})

    return app
