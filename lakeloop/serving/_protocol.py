"""Open Inference Protocol v2 (REST) requests and responses, JSON and binary tensor data.

Any ONNX model: each input has the datatype and the shape the model declares (`-1` for a free
dimension; a lakeloop model's feature columns are `[-1, 1]`, and `[N]` is taken for them too).
Inputs are parsed straight into numpy arrays, with one C-level pass to check the JSON value types
(a number where a string belongs, `true` or `"129.5"` in an FP32 tensor is a 400, never coerced) and
one vectorised check for NaN/inf. Anything wrong raises `V2Error`, which the app answers with 400
and `{"error": "..."}` naming the input, what it got and what the model expects.

Binary tensor data extension: the `Inference-Header-Content-Length` header gives the size of the
JSON header at the start of the body; the raw tensors follow it, in input order, for the inputs
whose `parameters.binary_data_size` is set. BYTES elements are a 4-byte little-endian length and
the bytes. Each output comes back binary when its own `parameters.binary_data` says so, else when
the request's `parameters.binary_data_output` does (`tritonclient` asks for binary by default).
The classification extension (`parameters.classification: K` on an output) answers the top K
entries of each row as BYTES `"value:index[:label]"`. Shared-memory parameters are refused (this
server has no shared memory); other request parameters (priority, timeout, sequence ids) are
accepted and have no effect.
"""

from __future__ import annotations

import functools
import math
import struct
import sys
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import orjson

try:  # the compiled fast path of `parse` (lakeloop/serving/_tensors.c); without it the same in Python
    from lakeloop.serving import _tensors
except ImportError:  # pragma: no cover - a build without a C compiler
    _tensors = None

NUMPY_OF = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
            "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
            "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
DATATYPE_OF = {np.dtype(v): k for k, v in NUMPY_OF.items()} | {np.dtype(object): "BYTES"}
FLOATS = frozenset({"FP16", "FP32", "FP64"})
# Binary tensors are little-endian (the protocol's rule): read in place on a little-endian machine.
WIRE_DTYPE = {k: np.dtype(v).newbyteorder("<") for k, v in NUMPY_OF.items() if k != "BYTES"}
NATIVE_IS_WIRE = sys.byteorder == "little"
# The Python types a JSON value of each datatype may have (orjson gives int, float, bool, str, None, list)
JSON_TYPES = {**{d: frozenset({int}) for d in NUMPY_OF if d[0] in "IU"}, "BOOL": frozenset({bool}),
              **{d: frozenset({int, float}) for d in FLOATS}}
WHAT = {**{d: "integers" for d in NUMPY_OF if d[0] in "IU"}, "BOOL": "true/false",
        **{d: "numbers" for d in FLOATS}, "BYTES": "strings"}
CODE_OF = {d: i for i, d in enumerate([*NUMPY_OF, "BYTES"])}  # _tensors.c's datatype codes, in this order
HEADER = "inference-header-content-length"
SHARED_MEMORY = frozenset({"shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"})


class V2Error(ValueError):
    """A request the server cannot accept: answered with 400 and a V2 error body."""


@dataclass(frozen=True)
class InputSpec:
    """One input the model declares: name, V2 datatype, shape (-1 for a free dimension) and whether the
    model takes missing values in it (NaN or JSON null for numbers, null for strings: a lakeloop model says
    so in its `lakeloop.nullable` metadata; any other model's inputs must be finite)."""

    name: str
    datatype: str
    shape: tuple[int, ...] = (-1, 1)
    nullable: bool = False

    @property
    def column(self) -> bool:
        """One value per row (`[-1, 1]`): a client may send it as `[N]` too."""
        return self.shape == (-1, 1)


class Inputs(dict[str, InputSpec]):
    """A model's inputs by name, in the model's order; also their table for the compiled parser."""

    @functools.cached_property
    def table(self) -> tuple[dict[str, tuple], tuple[str, ...]]:
        """(name -> (index, datatype code, shape, column, nullable, datatype), the names in order)."""
        return ({s.name: (i, CODE_OF[s.datatype], s.shape, s.column, s.nullable, s.datatype)
                 for i, s in enumerate(self.values())}, tuple(self))


@dataclass(frozen=True)
class OutputRequest:
    name: str
    binary: bool
    classification: int = 0  # top K entries per row as "value:index[:label]" (0: the tensor itself)


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]  # name -> array of the shape the client sent, ready for ONNX Runtime
    rows: int
    outputs: list[OutputRequest] | None  # None: every output, binary when `binary_outputs`
    binary_outputs: bool
    parameters: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """What one request may hold and take: rows (the batch dimension), bytes per string element, bytes of
    body (413 above it), and seconds to send the body once the head is in (408 after them)."""

    max_batch: int = 1024
    max_string_bytes: int = 65_536
    max_body_bytes: int = 64 * 1024 * 1024
    body_timeout_s: float = 30.0


def shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def parse(body: bytes, header_length: str | None, specs: dict[str, InputSpec], limits: Limits) -> InferRequest:
    """Parse and check a V2 infer request against the model's inputs.

    Raises:
        V2Error: malformed JSON, unknown/missing/duplicate input, wrong datatype, rank or shape, a data
            length that does not match the shape, values of the wrong JSON type, NaN/inf, a string
            above the element limit, or a batch above the row limit.
    """
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise V2Error(f"invalid Inference-Header-Content-Length {header_length!r}: expected an integer") from None
        if not 0 < split <= len(body):
            raise V2Error(f"Inference-Header-Content-Length {split} is outside the body ({len(body)} bytes)")
        header, binary = body[:split], memoryview(body)[split:]
    else:
        header, binary = body, memoryview(b"")
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise V2Error(f"malformed JSON in the request body: {exc}") from None
    if type(request) is not dict or type(request.get("inputs")) is not list or not request["inputs"]:
        raise V2Error("the request must be a JSON object with a non-empty 'inputs' list")
    tensors = request["inputs"]
    arrays, rows = (compiled_inputs(tensors, body, len(body) - len(binary), specs, limits)
                    or _inputs(tensors, specs, binary, limits))
    parameters = request.get("parameters")
    parameters = parameters if type(parameters) is dict else {}
    binary_out = parameters.get("binary_data_output", False) is True
    outputs = None
    if "outputs" in request:
        outputs = _outputs(request["outputs"], binary_out)
    request_id = request.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, arrays, rows, outputs, binary_out,
                        parameters)


def compiled_inputs(tensors: list, body: bytes, start: int, specs: dict[str, InputSpec], limits: Limits
                    ) -> tuple[dict[str, np.ndarray], int] | None:
    """`_inputs` compiled (lakeloop/serving/_tensors.c), for the requests it takes; None for the others
    (and where it is not built), which the Python parser then takes or refuses with its message.
    `tensors` are the request's JSON tensor objects; binary tensors are `body[start:]`."""
    model = _compiled_model(body, specs)
    return model and _tensors.inputs(tensors, *model, body, start, limits.max_string_bytes, limits.max_batch)


def compiled_grpc(message: bytes, specs: dict[str, InputSpec], limits: Limits
                  ) -> tuple[dict[str, np.ndarray], int] | None:
    """The inputs of a serialized gRPC ModelInferRequest whose tensors travel in raw_input_contents (laid
    out as the binary tensor extension's), compiled: None for the others, which `_grpc` parses in Python."""
    model = _compiled_model(message, specs)
    return model and _tensors.grpc_inputs(message, *model, limits.max_string_bytes, limits.max_batch)


def _compiled_model(data: bytes, specs: dict[str, InputSpec]) -> tuple[dict, tuple] | None:
    """The model's inputs as the compiled parser reads them (table, names); None where it cannot parse `data`
    (not built here, a byte order other than the wire's, not bytes)."""
    if _tensors is None or not NATIVE_IS_WIRE or type(data) is not bytes:
        return None
    return (specs if isinstance(specs, Inputs) else Inputs(specs)).table


def _inputs(tensors: list, specs: dict[str, InputSpec], binary: memoryview, limits: Limits
            ) -> tuple[dict[str, np.ndarray], int]:
    """The request's inputs as arrays in the model's order, and its rows: the parser in Python, which
    names what is wrong (the compiled one passes on anything it does not take)."""
    arrays: dict[str, np.ndarray] = {}
    columns_json: dict[str, list] = {}  # FP32 columns sent as JSON: converted together, one numpy call
    offset, rows, first = 0, None, None
    for tensor in tensors:
        name, length, value, offset = _input(tensor, specs, binary, offset, limits)
        if name in arrays or name in columns_json:
            raise V2Error(f"input {name!r} appears twice")
        if length is not None:  # an input whose first dimension is the batch
            if rows is None:
                rows, first = length, name
            elif length != rows:
                raise V2Error(f"input {name!r} has {length} rows but {first!r} has {rows}: "
                              "every input needs the same batch size")
        if type(value) is list:
            columns_json[name] = value
        else:
            arrays[name] = value
    rows = rows or 1  # no input with a free batch dimension: one fixed-shape sample
    if columns_json:
        arrays.update(_fp32_columns(columns_json, rows, specs))
    if offset != len(binary):
        raise V2Error(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    return check_inputs(arrays, specs, rows, limits), rows


def _outputs(requested: object, binary_default: bool) -> list[OutputRequest]:
    if type(requested) is not list:
        raise V2Error("'outputs' must be a list of objects with a 'name'")
    found = []
    for item in requested:
        name = item.get("name") if type(item) is dict else None
        if type(name) is not str:
            raise V2Error("each requested output must be an object with a 'name'")
        parameters = item.get("parameters")
        parameters = parameters if type(parameters) is dict else {}
        if not SHARED_MEMORY.isdisjoint(parameters):
            raise V2Error(f"output {name!r} asks for shared memory, which this server does not offer: "
                          "leave out the shared_memory_* parameters")
        binary = parameters.get("binary_data", binary_default)
        count = parameters.get("classification", 0)
        if type(binary) is not bool or type(count) is not int or count < 0:
            raise V2Error(f"output {name!r}: 'binary_data' must be true/false and 'classification' an integer >= 0")
        found.append(OutputRequest(name, binary, count))
    return found


def _input(tensor: object, specs: dict[str, InputSpec], binary: memoryview, offset: int, limits: Limits
           ) -> tuple[str, int | None, np.ndarray | list, int]:
    """(name, batch size or None for an input without a free first dimension, the array — or the raw
    list of an FP32 JSON column, converted later —, offset in the binary data)."""
    # The hot path of every request: plain type checks, no generator expressions.
    name = tensor.get("name") if type(tensor) is dict else None
    if type(name) is not str:
        raise V2Error("each input must be an object with a 'name'")
    datatype = tensor.get("datatype")
    spec = input_spec(name, datatype, specs)
    shape = shape_of(name, tensor.get("shape"), spec)
    count = math.prod(shape)
    batch = shape[0] if spec.shape and spec.shape[0] == -1 else None
    parameters = tensor.get("parameters")
    size = None
    if type(parameters) is dict:
        if not SHARED_MEMORY.isdisjoint(parameters):
            raise V2Error(f"input {name!r} is in shared memory, which this server does not offer: send its data "
                          "in the request")
        size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise V2Error(f"input {name!r} claims {size!r} bytes of binary data but only "
                          f"{len(binary) - offset} are left in the body")
        array = from_binary(name, spec, binary[offset:offset + size], count, limits)
        offset += size
    elif "data" in tensor:
        data = tensor["data"]
        if datatype == "FP32" and spec.column and type(data) is list:
            return name, batch, data, offset
        array = _from_json(name, spec, data, count, limits)
    else:
        raise V2Error(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    return name, batch, array.reshape(shape), offset


def input_spec(name: str, datatype: object, specs: dict[str, InputSpec]) -> InputSpec:
    """The model's declaration of input `name`, checked against the datatype the client sent."""
    spec = specs.get(name)
    if spec is None:
        raise V2Error(f"unknown input {name!r}: the model's inputs are {', '.join(specs)}")
    if datatype != spec.datatype:
        raise V2Error(f"input {name!r} has datatype {datatype!r}: expected {spec.datatype!r}")
    return spec


def check_inputs(arrays: dict[str, np.ndarray], specs: dict[str, InputSpec], rows: int, limits: Limits
                 ) -> dict[str, np.ndarray]:
    """Every declared input present (in the model's order) and the batch within the limit."""
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise V2Error(f"missing input(s) {', '.join(map(repr, missing))}: the model needs "
                      f"{', '.join(specs)}")
    if rows > limits.max_batch:
        raise V2Error(f"batch of {rows} rows is above this server's limit of {limits.max_batch}: split the request")
    return {n: arrays[n] for n in specs}  # the model's order, whatever order the client used


def batch_of(name: str, shape: tuple[int, ...], spec: InputSpec, rows: int | None, first: str | None
             ) -> tuple[int | None, str | None]:
    """Track the batch size across inputs: (rows, the input that set it); inputs with a free first
    dimension must agree."""
    if not spec.shape or spec.shape[0] != -1:
        return rows, first
    if rows is None:
        return shape[0], name
    if shape[0] != rows:
        raise V2Error(f"input {name!r} has {shape[0]} rows but {first!r} has {rows}: "
                      "every input needs the same batch size")
    return rows, first


def shape_of(name: str, shape: object, spec: InputSpec) -> tuple[int, ...]:
    """The client's shape, checked against the declared one ([N] stands for [N, 1] for a column)."""
    if spec.column and type(shape) is list and len(shape) == 2:  # the hot path: an [N, 1] column
        rows, width = shape
        if type(rows) is int and rows >= 1 and type(width) is int and width == 1:
            return rows, 1
    if type(shape) is not list or not all(type(d) is int and d >= 1 for d in shape):
        raise V2Error(f"input {name!r} has shape {shape!r}: expected a list of positive integers like "
                      f"{shape_text(spec.shape)} (-1: any size)")
    declared = spec.shape
    if len(shape) == 1 and spec.column:
        return shape[0], 1
    if len(shape) != len(declared) or any(want != -1 and got != want for got, want in zip(shape, declared,
                                                                                          strict=True)):
        raise V2Error(f"input {name!r} has shape {shape_text(shape)}: the model expects {shape_text(declared)} "
                      f"({'or [N], ' if spec.column else ''}rank {len(declared)}; -1: any size)")
    return tuple(shape)


def _fp32_columns(columns: dict[str, list], rows: int, specs: dict[str, InputSpec]) -> dict[str, np.ndarray]:
    """All FP32 JSON columns as one [k, rows] block (views of it per input) when they are flat lists of
    numbers; otherwise input by input, so the error names the input at fault."""
    block = None
    if set(map(type, chain.from_iterable(columns.values()))) <= JSON_TYPES["FP32"]:
        try:
            with np.errstate(over="ignore"):  # a number too large for FP32 becomes inf: refused just below
                block = np.array(list(columns.values()), dtype=np.float32)
        except (ValueError, TypeError, OverflowError):
            block = None
        if block is not None and not (block.size == rows * len(columns) and block.ndim == 2
                                      and math.isfinite(np.add.reduce(block, axis=None, dtype=np.float64))):
            block = None
    if block is None:
        return {name: _from_json(name, specs[name], data, rows, Limits()).reshape(rows, 1)
                for name, data in columns.items()}
    return {name: block[i].reshape(rows, 1) for i, name in enumerate(columns)}


def check_finite(name: str, array: np.ndarray, nullable: bool = False) -> None:
    # One float64 reduction instead of isfinite().all(): the sum of float32 values cannot overflow
    # float64, so it is finite exactly when every value is (NaN and ±inf propagate).
    if array.size == 1:  # a single value: cheaper as a Python float than as a reduction
        if math.isfinite(array.item(0)):
            return
    elif math.isfinite(np.add.reduce(array, axis=None, dtype=np.float64)):
        return
    if not nullable:
        raise V2Error(f"input {name!r} contains NaN or infinity, or a number too large for its datatype (this "
                      "model takes no missing values in it)")
    if np.isinf(array).any():  # NaN is a missing value the model handles; infinity is never a value
        raise V2Error(f"input {name!r} contains infinity")


def _flat(name: str, data: list) -> list:
    """JSON tensor data as one flat list: row-major nested lists ([[a], [b]], [[[...]]]) or already flat."""
    while data and type(data[0]) is list:
        if any(type(item) is not list for item in data):
            raise V2Error(f"input {name!r}: 'data' mixes lists and values at one level: send a flat list or "
                          "row-major nested lists")
        data = list(chain.from_iterable(data))
    return data


def _type_names(values: list) -> str:
    return ", ".join(sorted({"null" if v is None else type(v).__name__ for v in values}))


def _from_json(name: str, spec: InputSpec, data: object, count: int, limits: Limits) -> np.ndarray:
    if type(data) is not list:
        raise V2Error(f"input {name!r}: 'data' must be a list")
    datatype, nullable = spec.datatype, spec.nullable
    flat = _flat(name, data)
    if len(flat) != count:
        raise V2Error(f"input {name!r} has {len(flat)} values for its shape ({count} expected)")
    types = set(map(type, flat))
    if datatype == "BYTES":
        if nullable and type(None) in types:  # null is a missing category: the model's "" (its missing bucket)
            flat = ["" if v is None else v for v in flat]
            types.discard(type(None))
        if not types <= {str}:
            wrong = _type_names([v for v in flat if type(v) is not str])
            raise V2Error(f"input {name!r} (BYTES) must hold strings, not {wrong}"
                          + ("" if nullable else " (this model takes no nulls in it)"))
        check_lengths(name, flat, limits, encoded=False)
        return np.array(flat, dtype=object)
    allowed = JSON_TYPES[datatype]
    if nullable and datatype in FLOATS and type(None) in types:  # null is a missing number: NaN
        flat = [math.nan if v is None else v for v in flat]
        types.discard(type(None))
    if not types <= allowed:
        wrong = [v for v in flat if type(v) not in allowed]
        raise V2Error(f"input {name!r} ({datatype}) must hold {WHAT[datatype]}, not {_type_names(wrong)} "
                      f"(e.g. {orjson.dumps(wrong[0]).decode()[:40]})")
    try:
        with np.errstate(over="ignore"):  # a float too large for its type becomes inf: refused just below
            array = np.array(flat, dtype=NUMPY_OF[datatype])
    except OverflowError:
        info = np.iinfo(NUMPY_OF[datatype])
        raise V2Error(f"input {name!r} ({datatype}) holds a value outside {info.min}..{info.max}") from None
    if datatype in FLOATS:
        check_finite(name, array, nullable)
    return array


def check_lengths(name: str, values: list, limits: Limits, encoded: bool) -> None:
    if not values:
        return
    longest = max(map(len, values))
    if longest * (1 if encoded else 4) <= limits.max_string_bytes:  # a character is at most 4 UTF-8 bytes
        return
    if not encoded:
        longest = max(len(v.encode()) for v in values)
    if longest > limits.max_string_bytes:
        raise V2Error(f"input {name!r} has a {longest:,}-byte string: this server takes at most "
                      f"{limits.max_string_bytes:,} bytes per element (lakeloop serve --max-string-bytes)")


def from_binary(name: str, spec: InputSpec, raw: memoryview, count: int, limits: Limits) -> np.ndarray:
    datatype = spec.datatype
    if datatype == "BYTES":
        values, pos = [], 0
        try:
            for _ in range(count):
                (length,) = struct.unpack_from("<I", raw, pos)
                pos += 4
                if pos + length > len(raw):
                    raise V2Error(f"input {name!r}: a BYTES element runs past its binary data")
                if length > limits.max_string_bytes:
                    raise V2Error(f"input {name!r} has a {length:,}-byte string: this server takes at most "
                                  f"{limits.max_string_bytes:,} bytes per element (lakeloop serve --max-string-bytes)")
                values.append(bytes(raw[pos:pos + length]).decode())
                pos += length
        except (struct.error, UnicodeDecodeError):
            raise V2Error(f"input {name!r}: BYTES data must be {count} length-prefixed UTF-8 strings") from None
        if pos != len(raw):
            raise V2Error(f"input {name!r}: {len(raw) - pos} bytes left after {count} BYTES elements")
        return np.array(values, dtype=object)
    wire = WIRE_DTYPE[datatype]
    if len(raw) != count * wire.itemsize:
        raise V2Error(f"input {name!r}: {len(raw)} bytes of binary data for {count} {datatype} values "
                      f"({count * wire.itemsize} expected)")
    array = np.frombuffer(raw, dtype=wire)
    if not NATIVE_IS_WIRE:
        array = array.astype(NUMPY_OF[datatype])
    if datatype in FLOATS:
        check_finite(name, array, spec.nullable)
    return array


def response(model_name: str, model_version: str, request: InferRequest, outputs: dict[str, np.ndarray],
             labels: dict[str, list[str]] | None = None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Encode the outputs as a V2 response: (body, extra headers). `labels` names the entries of an output
    (a lakeloop model's class names) for the classification extension."""
    wanted = request.outputs or [OutputRequest(n, request.binary_outputs) for n in outputs]
    body: dict = {"model_name": model_name, "model_version": model_version, "outputs": []}
    if request.id is not None:
        body["id"] = request.id
    blobs = []
    for want in wanted:
        array = outputs[want.name]
        if want.classification:
            array = classify(array, want.classification, (labels or {}).get(want.name))
        tensor: dict = {"name": want.name, "datatype": DATATYPE_OF[array.dtype], "shape": list(array.shape)}
        if want.binary:
            blob = to_binary(array)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.ravel().tolist() if array.dtype == object else array.ravel()
        body["outputs"].append(tensor)
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, [(b"content-type", b"application/json")]
    return b"".join([header, *blobs]), [(b"content-type", b"application/octet-stream"),
                                         (b"inference-header-content-length", str(len(header)).encode())]


def to_binary(array: np.ndarray) -> bytes:
    if array.dtype == object:  # BYTES: each element a 4-byte little-endian length, then its bytes
        parts = []
        for value in array.ravel():
            data = value if isinstance(value, bytes) else str(value).encode()
            parts += [struct.pack("<I", len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def classify(array: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: the top `k` entries of each row, "value:index[:label]", [N, k]."""
    rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    k = min(k, rows.shape[1])
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    text = [[f"{rows[r, i]:g}:{i}" + (f":{labels[i]}" if labels and i < len(labels) else "") for i in row]
            for r, row in enumerate(top)]
    return np.array(text, dtype=object).reshape(rows.shape[0], k)


def check_outputs(requested: list[OutputRequest] | None, available: list[str]) -> None:
    for want in requested or ():
        if want.name not in available:
            raise V2Error(f"unknown output {want.name!r}: the model's outputs are {', '.join(available)}")


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
