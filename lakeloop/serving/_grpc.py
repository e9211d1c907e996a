"""The Open Inference Protocol v2 over gRPC: KServe's and Triton's `inference.GRPCInferenceService`.

ServerLive, ServerReady, ModelReady (open, like the HTTP probes), ServerMetadata, ModelMetadata and
ModelInfer (bearer API key in the `authorization` metadata). Tensors arrive as `raw_input_contents`
(what tritonclient sends) or as typed `contents`; outputs go back as `raw_output_contents`. The
same `ModelServer` answers as over HTTP — the same models and hot swap, checks and limits, inference
log and metrics —, so the two protocols cannot drift apart. It runs in the HTTP server's event loop
(`grpc.aio`), on a port of its own; a request above `max_body_bytes` is refused by gRPC itself.
"""

from __future__ import annotations

import inspect
import logging
import math
import time

import grpc
import numpy as np

from lakeloop import __version__
from lakeloop.serving import _inference_pb2 as pb
from lakeloop.serving import _protocol as v2
from lakeloop.serving._model import LoadedModel
from lakeloop.serving._server import ModelServer

log = logging.getLogger("lakeloop.serving")
SERVICE = "inference.GRPCInferenceService"
# datatype -> the typed field of InferTensorContents that carries it (FP16 travels raw only)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}
HTTP_EQUIVALENT = {grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400,
                   grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.NOT_FOUND: 404,
                   grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.INTERNAL: 500}


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse(request: pb.ModelInferRequest, specs: dict[str, v2.InputSpec], limits: v2.Limits) -> v2.InferRequest:
    """A ModelInferRequest as the parsed request the HTTP side builds, with the same checks.

    Raises:
        V2Error: anything the HTTP parser refuses, and raw contents that do not match the inputs.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise v2.V2Error(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: one per input")
    if not request.inputs:
        raise v2.V2Error("the request has no inputs")
    compiled = _compiled(request, raw, specs, limits) if raw else None
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


def _compiled(request: pb.ModelInferRequest, raw, specs: dict[str, v2.InputSpec], limits: v2.Limits
              ) -> tuple[dict[str, np.ndarray], int] | None:
    """Raw contents through the compiled V2 parser: they are laid out as the HTTP binary tensor
    extension's (numbers little-endian, BYTES length-prefixed), so the request becomes that extension's
    header and body. None where it passes (or where an input has parameters, which `_inputs` checks)."""
    tensors = []
    for tensor, contents in zip(request.inputs, raw, strict=True):
        if tensor.parameters:
            return None
        tensors.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                        "parameters": {"binary_data_size": len(contents)}})
    return v2.compiled_inputs(tensors, b"".join(raw), 0, specs, limits)


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
             labels: dict[str, list[str]]) -> pb.ModelInferResponse:
    answer = pb.ModelInferResponse(model_name=name, model_version=version, id=request.id or "")
    for want in request.outputs or [v2.OutputRequest(n, True) for n in outputs]:
        array = outputs[want.name]
        if want.classification:
            array = v2.classify(array, want.classification, labels.get(want.name))
        answer.outputs.add(name=want.name, datatype=v2.DATATYPE_OF[array.dtype], shape=array.shape)
        answer.raw_output_contents.append(v2.to_binary(array))
    return answer


def handlers(server: ModelServer) -> grpc.GenericRpcHandler:
    """The service's RPCs as a generic handler for a `grpc.aio` server."""

    def authorize(context: grpc.aio.ServicerContext) -> None:
        header = dict(context.invocation_metadata() or ()).get("authorization")
        if not server.authorized(header):
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED,
                           "missing or invalid API key: send the metadata 'authorization: Bearer <key>'")

    def model_of(name: str, version: str) -> LoadedModel:
        served = server.models.get(name)
        if served is None:
            raise _Refused(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}: this server serves "
                                                      f"{server.describe()}")
        model = served.model
        if model is None:
            raise _Refused(grpc.StatusCode.UNAVAILABLE, f"{name} is not loaded yet")
        if version and version != model.version:
            raise _Refused(grpc.StatusCode.NOT_FOUND, f"{name} version {version!r} is not loaded (serving "
                                                      f"{model.version!r})")
        return model

    def rpc(function, request_type, response_type):
        asynchronous = inspect.iscoroutinefunction(function)

        async def call(request, context):
            try:
                return await function(request, context) if asynchronous else function(request, context)
            except _Refused as exc:
                await context.abort(exc.code, str(exc))
        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=request_type.FromString,
                                                   response_serializer=response_type.SerializeToString)

    def live(request, context):
        return pb.ServerLiveResponse(live=True)

    def ready(request, context):
        return pb.ServerReadyResponse(ready=server.ready)

    def model_ready(request, context):
        served = server.models.get(request.name)
        model = served.model if served is not None else None
        return pb.ModelReadyResponse(ready=model is not None and (not request.version or
                                                                  request.version == model.version))

    def server_metadata(request, context):
        authorize(context)
        return pb.ServerMetadataResponse(name="lakeloop", version=__version__, extensions=["model_repository"])

    def model_metadata(request, context):
        authorize(context)
        model = model_of(request.name, request.version)
        meta = model.metadata()
        answer = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for tensor in meta["inputs"]:
            answer.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        for tensor in meta["outputs"]:
            answer.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        return answer

    async def infer(request, context):
        started = time.perf_counter()
        code, rows, name = grpc.StatusCode.OK, 0, request.model_name
        try:
            authorize(context)
            model = model_of(name, request.model_version)
            try:
                parsed = parse(request, model.inputs, server.limits)
                if server.batcher is not None:
                    outputs = await server.infer_batched(name, model, parsed)
                else:
                    outputs = server.infer(name, model, parsed)
            except v2.V2Error as exc:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            except Exception as exc:  # not a client error: the inputs passed every check
                log.exception("%s v%s: inference failed", name, model.version)
                raise _Refused(grpc.StatusCode.INTERNAL, f"inference failed: {exc}") from None
            rows = parsed.rows
            return response(name, model.version, parsed, outputs, model.labels)
        except _Refused as exc:
            code = exc.code
            raise
        finally:
            if name in server.models and code != grpc.StatusCode.UNAUTHENTICATED:
                server.metrics.observe(name, HTTP_EQUIVALENT.get(code, 500), time.perf_counter() - started, rows)

    methods = {"ServerLive": rpc(live, pb.ServerLiveRequest, pb.ServerLiveResponse),
               "ServerReady": rpc(ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
               "ModelReady": rpc(model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
               "ServerMetadata": rpc(server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
               "ModelMetadata": rpc(model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
               "ModelInfer": rpc(infer, pb.ModelInferRequest, pb.ModelInferResponse)}
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def start(server: ModelServer, address: str) -> grpc.aio.Server:
    """A gRPC server on `address` (host:port) in the running event loop, serving `server`'s models."""
    grpc_server = grpc.aio.server(options=[("grpc.max_receive_message_length", server.limits.max_body_bytes),
                                           ("grpc.so_reuseport", 1)])  # every worker process binds the port
    grpc_server.add_generic_rpc_handlers((handlers(server),))
    if grpc_server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await grpc_server.start()
    return grpc_server
