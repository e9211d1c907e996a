"""The HTTP face of the model server: Open Inference Protocol v2 REST, `/metrics`, a reload endpoint.

    GET  /v2/health/live, /v2/health/ready           open (Kubernetes probes)
    GET  /v2/models/{name}/ready                      open
    GET  /v2, /v2/models/{name}[/versions/{v}]       metadata               API key
    POST /v2/models/{name}[/versions/{v}]/infer       inference              API key
    POST /v2/repository/models/{name}/load            re-check the alias now API key
    GET  /metrics                                     Prometheus             API key

Handlers are `async def` and call ONNX Runtime inline: a small tabular model answers in tens of
microseconds, less than a hop to a thread pool would cost. Bad requests get 400 and
`{"error": "..."}`; nothing a client sends can produce a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lakeloop import __version__
from lakeloop.errors import LakeloopError
from lakeloop.serving import _protocol as v2
from lakeloop.serving._server import ModelServer

log = logging.getLogger("lakeloop.serving")
JSON = "application/json"


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON)


def _error(message: str, status: int) -> Response:
    return Response(v2.error_body(message), status_code=status, media_type=JSON)


def create_app(server: ModelServer) -> Starlette:
    """The ASGI app serving `server`; starts and stops its background work with the app."""
    name = server.name

    def unauthorized(request: Request) -> Response | None:
        if server.authorized(request.headers.get("authorization")):
            return None
        return Response(v2.error_body("missing or invalid API key: send 'Authorization: Bearer <key>'"),
                        status_code=401, media_type=JSON, headers={"www-authenticate": "Bearer"})

    def unknown(model: str) -> Response:
        return _error(f"unknown model {model!r}: this server serves {name!r}", 404)

    def version_mismatch(request: Request) -> Response | None:
        wanted = request.path_params.get("version")
        current = server.model.version if server.model else None
        if wanted is not None and wanted != current:
            return _error(f"{name} version {wanted!r} is not loaded (serving {current!r})", 404)
        return None

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        is_ready = server.model is not None
        return _json({"ready": is_ready}, 200 if is_ready else 503)

    async def model_ready(request: Request) -> Response:
        if request.path_params["model"] != name:
            return unknown(request.path_params["model"])
        return await ready(request)

    async def server_metadata(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        return _json({"name": "lakeloop", "version": __version__,
                      "extensions": ["binary_tensor_data", "model_repository"]})

    async def model_metadata(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        if request.path_params["model"] != name:
            return unknown(request.path_params["model"])
        if (mismatch := version_mismatch(request)) is not None:
            return mismatch
        model = server.model
        if model is None:
            return _error(f"{name} is not loaded yet: {server.source.describe()} names no loadable version", 503)
        return _json(model.metadata())

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        if (denied := unauthorized(request)) is not None:
            server.metrics.observe(name, 401, time.perf_counter() - started)
            return denied
        model = server.model  # read once: a swap during this request does not affect it
        if request.path_params["model"] != name:
            answer, rows = unknown(request.path_params["model"]), 0
        elif model is None:
            answer, rows = _error(f"{name} is not loaded yet", 503), 0
        elif (mismatch := version_mismatch(request)) is not None:
            answer, rows = mismatch, 0
        else:
            answer, rows = await _infer(request, model)
        server.metrics.observe(name, answer.status_code, time.perf_counter() - started, rows)
        return answer

    async def _infer(request: Request, model) -> tuple[Response, int]:
        body = await request.body()
        try:
            parsed = v2.parse(body, request.headers.get(v2.HEADER), model.inputs, server.max_batch)
            v2.check_outputs(parsed.outputs, model.outputs)
        except v2.V2Error as exc:
            return _error(str(exc), 400), 0
        try:
            outputs = model.run(parsed.inputs)
        except Exception as exc:  # not a client error: the inputs passed every check
            log.exception("%s v%s: inference failed", name, model.version)
            return _error(f"inference failed: {exc}", 500), 0
        if server.inference_log is not None:
            server.inference_log.record(name, model.version, parsed.rows, parsed.inputs, outputs)
        payload, headers = v2.response(name, model.version, parsed, outputs)
        return Response(payload, headers=headers), parsed.rows

    async def load(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        if request.path_params["model"] != name:
            return unknown(request.path_params["model"])
        try:
            result = await run_in_threadpool(server.refresh, True)
        except LakeloopError as exc:
            current = server.model.version if server.model else None
            return _json({"error": str(exc), "version": current}, 400)
        return _json({"name": name, **result})

    async def metrics(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        logger = server.inference_log
        if logger is not None:
            server.metrics.gauges.update({"lakeloop_inference_log_written_rows": logger.written_rows,
                                          "lakeloop_inference_log_dropped_rows": logger.dropped_rows})
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    routes = [
        Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/models/{model}", model_metadata),
        Route("/v2/models/{model}/versions/{version}", model_metadata),
        Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", load, methods=["POST"]),
        Route("/metrics", metrics),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(server.start)
        try:
            yield
        finally:
            await run_in_threadpool(server.close)

    return Starlette(routes=routes, lifespan=lifespan)
