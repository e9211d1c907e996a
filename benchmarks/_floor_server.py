"""The floor: what the HTTP (and gRPC) stack costs alone, with no model server in it.

A bare ASGI app on the same uvicorn stack as `lakeloop serve` (httptools with lakeloop's bounded
heads, the same keep-alive and server settings, one process) that reads the whole request body and
answers a fixed payload: the answer lakeloop gives for a body of that length, so both send the same
bytes back. With a gRPC port, a bare `grpc.aio` servicer in the same event loop (as lakeloop runs
its own) answers ModelInfer with lakeloop's answer bytes, neither parsing nor building a message.
Nothing a model server must do — auth, parsing, checks, inference, logs, metrics — happens here, so
its throughput is the most any Python server on this stack could reach.

Usage: python benchmarks/_floor_server.py ANSWERS.json PORT [GRPC_PORT]
ANSWERS.json: {"http": {"<body bytes>": {"path": ..., "headers": {...}}}, "grpc": {"<message bytes>": path}}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lakeloop._uvicorn import options as bounded

INFER = "/inference.GRPCInferenceService/ModelInfer"


def load_answers(path: Path) -> tuple[dict[int, tuple[bytes, list]], dict[int, bytes]]:
    spec = json.loads(path.read_text())
    http = {int(n): (Path(a["path"]).read_bytes(), [(k.lower().encode(), v.encode()) for k, v in a["headers"].items()])
            for n, a in spec["http"].items()}
    return http, {int(n): Path(p).read_bytes() for n, p in spec.get("grpc", {}).items()}


def app_of(http: dict[int, tuple[bytes, list]], grpc_answers: dict[int, bytes], grpc_port: int | None):
    fallback = next(iter(http.values()))
    ready = b'{"ready": true}'

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            server = None
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if grpc_port:
                        server = grpc.aio.server()
                        server.add_generic_rpc_handlers((_grpc_handler(grpc_answers),))
                        server.add_insecure_port(f"127.0.0.1:{grpc_port}")
                        await server.start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if server is not None:
                        await server.stop(1)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if scope["method"] == "GET":
            answer, headers = ready, [(b"content-type", b"application/json")]
        else:
            answer, headers = http.get(len(body), fallback)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*headers, (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return app


def _grpc_handler(answers: dict[int, bytes]) -> grpc.GenericRpcHandler:
    fallback = next(iter(answers.values()), b"")

    async def infer(request: bytes, context) -> bytes:
        return answers.get(len(request), fallback)

    method = grpc.unary_unary_rpc_method_handler(infer)  # no (de)serializers: bytes in, bytes out

    class Handler(grpc.GenericRpcHandler):
        def service(self, details):
            return method if details.method == INFER else None

    return Handler()


if __name__ == "__main__":
    http, grpc_answers = load_answers(Path(sys.argv[1]))
    port = int(sys.argv[2])
    grpc_port = int(sys.argv[3]) if len(sys.argv) > 3 else None
    uvicorn.run(app_of(http, grpc_answers, grpc_port), host="127.0.0.1", port=port, access_log=False,
                log_level="warning", timeout_keep_alive=30, server_header=False, **bounded(16 * 1024, 10.0))
