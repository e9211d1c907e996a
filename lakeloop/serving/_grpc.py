"""The Open Inference Protocol v2 over gRPC: KServe's and Triton's `inference.GRPCInferenceService`.

ServerLive, ServerReady, ModelReady (open, like the HTTP probes), ServerMetadata, ModelMetadata and
ModelInfer (bearer API key in the `authorization` metadata). Tensors arrive as `raw_input_contents`
(what tritonclient sends) or as typed `contents`; outputs go back as `raw_output_contents`. The
same `ModelServer` answers as over HTTP — the same models and hot swap, checks and limits, inference
log and metrics —, so the two protocols cannot drift apart. It runs in the HTTP server's event loop, on
a port of its own, over one of two transports that call the same functions (`calls`): lakeloop's compiled
HTTP/2 front (`front_handler`, the default: `_front.c` speaks HTTP/2 and gRPC's framing, this module
the service) or grpcio's `grpc.aio` (`handlers`, with `lakeloop serve --http uvicorn`). Either refuses a
message above `max_body_bytes` before it reaches Python.
"""

from __future__ import annotations

import enum
import inspect
import logging
import math
import time
from collections.abc import Callable

import numpy as np
from google.protobuf.message import DecodeError

from lakeloop import __version__
from lakeloop.serving import _inference_pb2 as pb
from lakeloop.serving import _protocol as v2
from lakeloop.serving._model import LoadedModel
from lakeloop.serving._server import ModelServer

try:  # a ModelInferResponse encoded in one C call
    from lakeloop.serving._tensors import grpc_response as _encode
except ImportError:  # not built here: protobuf encodes it
    _encode = None

log = logging.getLogger("lakeloop.serving")
SERVICE = "inference.GRPCInferenceService"
# datatype -> the typed field of InferTensorContents that carries it (FP16 travels raw only)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}


class Code(enum.IntEnum):
    """The gRPC status codes this service answers (grpc.StatusCode's numbers, without importing grpcio:
    lakeloop's HTTP/2 front does not need it)."""
    OK = 0
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


HTTP_EQUIVALENT = {Code.OK: 200, Code.INVALID_ARGUMENT: 400, Code.UNAUTHENTICATED: 401, Code.NOT_FOUND: 404,
                   Code.UNAVAILABLE: 503, Code.INTERNAL: 500}


class _Refused(Exception):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse(request: pb.ModelInferRequest, message: bytes, specs: dict[str, v2.InputSpec], limits: v2.Limits
          ) -> v2.InferRequest:
    """A ModelInferRequest (and its serialized `message`) as the parsed request the HTTP side builds, with the
    same checks.

    Raises:
        V2Error: anything the HTTP parser refuses, and raw contents that do not match the inputs.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise v2.V2Error(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: one per input")
    if not request.inputs:
        raise v2.V2Error("the request has no inputs")
    compiled = v2.compiled_grpc(message, specs, limits) if raw else None
    arrays, rows = compiled or _inputs(request, raw, specs, limits)
    outputs = []
    for wanted in request.outputs:
        if wanted.parameters and not v2.SHARED_MEMORY.isdisjoint(wanted.parameters):
            raise v2.V2Error(f"output {wanted.name!r} asks for shared memory, which this server does not offer")
        count = wanted.parameters["classification"].int64_param if "classification" in wanted.parameters else 0
        if count < 0:
            raise v2.V2Error(f"output {wanted.name!r}: 'classification' must be an integer >= 0")
        outputs.append(v2.OutputRequest(wanted.name, True, count))
    return v2.InferRequest(request.id or None, arrays, rows, outputs or None, True)


def _inputs(request: pb.ModelInferRequest, raw, specs: dict[str, v2.InputSpec], limits: v2.Limits
            ) -> tuple[dict[str, np.ndarray], int]:
    """The inputs in Python, naming what is wrong (the compiled parser passes on anything it does not take)."""
    arrays: dict = {}
    rows = first = None
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        spec = v2.input_spec(name, tensor.datatype, specs)
        if name in arrays:
            raise v2.V2Error(f"input {name!r} appears twice")
        if tensor.parameters and not v2.SHARED_MEMORY.isdisjoint(tensor.parameters):
            raise v2.V2Error(f"input {name!r} is in shared memory, which this server does not offer: send its data "
                             "in the request")
        shape = v2.shape_of(name, list(tensor.shape), spec)
        count = math.prod(shape)
        if raw:
            array = v2.from_binary(name, spec, memoryview(raw[i]), count, limits)
        else:
            array = _from_contents(name, spec, tensor, count, limits)
        rows, first = v2.batch_of(name, shape, spec, rows, first)
        arrays[name] = array.reshape(shape)
    rows = rows or 1
    return v2.check_inputs(arrays, specs, rows, limits), rows


def _from_contents(name: str, spec: v2.InputSpec, tensor, count: int, limits: v2.Limits) -> np.ndarray:
    field = CONTENTS.get(spec.datatype)
    if field is None:
        raise v2.V2Error(f"input {name!r} ({spec.datatype}) has no typed contents field in the protocol: send it in "
                         "raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise v2.V2Error(f"input {name!r} has {len(values)} values in contents.{field} for its shape ({count} "
                         "expected)")
    if spec.datatype == "BYTES":
        try:
            strings = [v.decode() for v in values]
        except UnicodeDecodeError:
            raise v2.V2Error(f"input {name!r}: BYTES elements must be UTF-8") from None
        v2.check_lengths(name, strings, limits, encoded=False)
        return np.array(strings, dtype=object)
    try:
        array = np.array(values, dtype=v2.NUMPY_OF[spec.datatype])
    except OverflowError:
        info = np.iinfo(v2.NUMPY_OF[spec.datatype])
        raise v2.V2Error(f"input {name!r} ({spec.datatype}) holds a value outside {info.min}..{info.max}") from None
    if spec.datatype in v2.FLOATS:
        v2.check_finite(name, array, spec.nullable)
    return array


def response(name: str, version: str, request: v2.InferRequest, outputs: dict[str, np.ndarray],
             labels: dict[str, list[str]]) -> bytes:
    """The serialized ModelInferResponse: every output (or those asked for) in raw_output_contents. Encoded in
    one C call where it can be (`_tensors.grpc_response`, the same bytes as protobuf's: 5 -> <1 µs), by
    protobuf for the rest (BYTES outputs, a byte order other than the wire's, not built here)."""
    tensors = []
    for want in request.outputs or [v2.OutputRequest(n, True) for n in outputs]:
        array = outputs[want.name]
        if want.classification:
            array = v2.classify(array, want.classification, labels.get(want.name))
        tensors.append((want.name, v2.DATATYPE_OF[array.dtype], array))
    if _encode is not None and v2.NATIVE_IS_WIRE:
        encoded = _encode(name, version, request.id or "", tuple(tensors))
        if encoded is not None:
            return encoded
    answer = pb.ModelInferResponse(model_name=name, model_version=version, id=request.id or "")
    for output, datatype, array in tensors:
        answer.outputs.add(name=output, datatype=datatype, shape=array.shape)
        answer.raw_output_contents.append(v2.to_binary(array))
    return answer.SerializeToString()


def serialized(result) -> bytes:
    """An RPC's answer on the wire: ModelInfer's comes encoded already, the others are messages."""
    return result if type(result) is bytes else result.SerializeToString()


def calls(server: ModelServer) -> dict[str, tuple[type, Callable]]:
    """The service's RPCs by method name, whatever carries them (grpc.aio or lakeloop's HTTP/2 front): each
    is (request type, function(request, message, authorization, alone, reply)) — the decoded request and its
    bytes (the compiled parser reads ModelInfer's tensors from them) —, returning the response message
    (ModelInfer's serialized already, see `response`; `serialized` puts either on the wire) or raising
    `_Refused`. `alone` and `reply` are ModelInfer's, as over HTTP: alone, a call skips the batcher's
    queue; with `reply`, a batched call is answered through it (a response or a `_Refused`) and None is
    returned, without it an awaitable is."""

    def authorize(authorization: str | None) -> None:
        if not server.authorized(authorization):
            raise _Refused(Code.UNAUTHENTICATED,
                           "missing or invalid API key: send the metadata 'authorization: Bearer <key>'")

    def model_of(name: str, version: str) -> LoadedModel:
        served = server.models.get(name)
        if served is None:
            raise _Refused(Code.NOT_FOUND, f"unknown model {name!r}: this server serves {server.describe()}")
        model = served.model
        if model is None:
            raise _Refused(Code.UNAVAILABLE, f"{name} is not loaded yet")
        if version and version != model.version:
            raise _Refused(Code.NOT_FOUND, f"{name} version {version!r} is not loaded (serving {model.version!r})")
        return model

    def live(request, message, authorization, alone=False, reply=None):
        return pb.ServerLiveResponse(live=True)

    def ready(request, message, authorization, alone=False, reply=None):
        return pb.ServerReadyResponse(ready=server.ready)

    def model_ready(request, message, authorization, alone=False, reply=None):
        served = server.models.get(request.name)
        model = served.model if served is not None else None
        return pb.ModelReadyResponse(ready=model is not None and (not request.version or
                                                                  request.version == model.version))

    def server_metadata(request, message, authorization, alone=False, reply=None):
        authorize(authorization)
        return pb.ServerMetadataResponse(name="lakeloop", version=__version__, extensions=["model_repository"])

    def model_metadata(request, message, authorization, alone=False, reply=None):
        authorize(authorization)
        model = model_of(request.name, request.version)
        meta = model.metadata()
        answer = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for tensor in meta["inputs"]:
            answer.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        for tensor in meta["outputs"]:
            answer.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        return answer

    def observe(name: str, code: Code, started: float, rows: int) -> None:
        if name in server.models:
            server.metrics.observe(name, HTTP_EQUIVALENT.get(code, 500), time.perf_counter() - started, rows)

    def outcome(name: str, model: LoadedModel, parsed: v2.InferRequest, result, started: float):
        """The response for a run's outputs, or the `_Refused` for its exception; counted in the metrics."""
        if isinstance(result, BaseException):
            if isinstance(result, v2.V2Error):
                refused = _Refused(Code.INVALID_ARGUMENT, str(result))
            else:  # not a client error: the inputs passed every check
                log.error("%s v%s: inference failed", name, model.version, exc_info=result)
                refused = _Refused(Code.INTERNAL, f"inference failed: {result}")
            observe(name, refused.code, started, 0)
            return refused
        answer = response(name, model.version, parsed, result, model.labels)
        observe(name, Code.OK, started, parsed.rows)
        return answer

    def infer(request, message, authorization, alone=False, reply=None):
        authorize(authorization)
        started = time.perf_counter()
        name = request.model_name
        try:
            model = model_of(name, request.model_version)
            parsed = parse(request, message, model.inputs, server.limits)
        except _Refused as exc:
            observe(name, exc.code, started, 0)
            raise
        except v2.V2Error as exc:
            observe(name, Code.INVALID_ARGUMENT, started, 0)
            raise _Refused(Code.INVALID_ARGUMENT, str(exc)) from None
        batcher = server.batcher
        try:
            if batcher is not None and not (alone and batcher.immediate):
                if reply is not None:
                    server.submit_batched(name, model, parsed, True,
                                          lambda result: reply(outcome(name, model, parsed, result, started)))
                    return None
                return batched(name, model, parsed, started)
            result = server.infer(name, model, parsed)
        except Exception as exc:
            result = exc
        return settled(outcome(name, model, parsed, result, started))

    async def batched(name: str, model: LoadedModel, parsed: v2.InferRequest, started: float):
        try:
            result = await server.infer_batched(name, model, parsed)
        except Exception as exc:
            result = exc
        return settled(outcome(name, model, parsed, result, started))

    def settled(answer):
        if isinstance(answer, _Refused):
            raise answer
        return answer

    return {"ServerLive": (pb.ServerLiveRequest, live), "ServerReady": (pb.ServerReadyRequest, ready),
            "ModelReady": (pb.ModelReadyRequest, model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, server_metadata),
            "ModelMetadata": (pb.ModelMetadataRequest, model_metadata), "ModelInfer": (pb.ModelInferRequest, infer)}


def decode(request_type: type, message: bytes):
    try:
        return request_type.FromString(message)
    except DecodeError:
        raise _Refused(Code.INVALID_ARGUMENT,
                       f"the request is not a valid {request_type.DESCRIPTOR.full_name} message") from None


def handlers(server: ModelServer):
    """The service's RPCs as a generic handler for a `grpc.aio` server (`lakeloop serve --http uvicorn`)."""
    import grpc

    def rpc(request_type: type, function: Callable):
        async def call(message: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                result = function(decode(request_type, message), message,
                                  dict(context.invocation_metadata() or ()).get("authorization"))
                if inspect.isawaitable(result):
                    result = await result
                return serialized(result)
            except _Refused as exc:
                await context.abort(grpc.StatusCode[exc.code.name], str(exc))
        return grpc.unary_unary_rpc_method_handler(call)  # bytes in and out: `decode` names a bad message

    return grpc.method_handlers_generic_handler(
        SERVICE, {method: rpc(request_type, function) for method, (request_type, function) in calls(server).items()})


def front_handler(server: ModelServer) -> Callable:
    """The service for lakeloop's HTTP/2 front (`_front.Front(..., http2=True)`): one call per complete request."""
    table = calls(server)
    prefix = f"/{SERVICE}/"
    offered = ", ".join(table)

    def handle(conn, stream_id: int, path: str, headers: dict, message: bytes, alone: bool) -> None:
        def reply(result) -> None:
            if isinstance(result, _Refused):
                conn.respond_grpc(stream_id, int(result.code), None, str(result))
            else:
                conn.respond_grpc(stream_id, 0, serialized(result), "")

        found = table.get(path[len(prefix):]) if path.startswith(prefix) else None
        if found is None:
            reply(_Refused(Code.UNIMPLEMENTED, f"unknown method {path}: this server offers {SERVICE}'s {offered}"))
            return
        request_type, function = found
        authorization = headers.get(b"authorization")
        try:
            result = function(decode(request_type, message), message,
                              authorization.decode("latin-1") if authorization else None, alone, reply)
        except _Refused as exc:
            result = exc
        if result is not None:
            reply(result)

    return handle


async def start(server: ModelServer, address: str):
    """A grpc.aio server on `address` (host:port) in the running event loop, serving `server`'s models."""
    import grpc
    grpc_server = grpc.aio.server(options=[("grpc.max_receive_message_length", server.limits.max_body_bytes),
                                           ("grpc.so_reuseport", 1)])  # every worker process binds the port
    grpc_server.add_generic_rpc_handlers((handlers(server),))
    if grpc_server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await grpc_server.start()
    return grpc_server
