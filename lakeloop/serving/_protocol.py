"""Open Inference Protocol v2 (REST) requests and responses, JSON and binary tensor data.

A request names one V2 input per raw feature column (FP32/INT64 numbers, BYTES strings). Inputs
are parsed straight into numpy arrays: no per-element Python validation, one vectorised check for
NaN/inf. Anything wrong raises `V2Error`, which the app answers with 400 and `{"error": "..."}`.

Binary tensor data extension: the `Inference-Header-Content-Length` header gives the size of the
JSON header at the start of the body; the raw tensors follow it, in input order, for the inputs
whose `parameters.binary_data_size` is set. BYTES elements are a 4-byte little-endian length and
the bytes. Outputs come back binary when the request asks for it (`binary_data_output`, or
`binary_data` on a requested output), as `tritonclient` does by default.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import orjson

NUMPY_OF = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}
DATATYPE_OF = {np.dtype(v): k for k, v in NUMPY_OF.items()}
HEADER = "inference-header-content-length"


class V2Error(ValueError):
    """A request the server cannot accept: answered with 400 and a V2 error body."""


@dataclass(frozen=True)
class InputSpec:
    """One input the model declares: name and V2 datatype (shape is [N, 1] or [N]), and whether the model
    takes missing values in it (NaN or JSON null for numbers, null for strings: a lakeloop model says so in
    its `lakeloop.nullable` metadata; any other model's inputs must be finite)."""

    name: str
    datatype: str
    nullable: bool = False


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]  # name -> [N, 1] array ready for ONNX Runtime
    rows: int
    outputs: list[str] | None  # None: every output
    binary_outputs: bool


def parse(body: bytes, header_length: str | None, specs: dict[str, InputSpec], max_batch: int) -> InferRequest:
    """Parse and check a V2 infer request against the model's inputs.

    Raises:
        V2Error: malformed JSON, unknown/missing/duplicate input, wrong datatype or shape, a data
            length that does not match the shape, NaN/inf, or a batch above `max_batch`.
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
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise V2Error("the request must be a JSON object with a non-empty 'inputs' list")
    arrays: dict[str, np.ndarray] = {}
    fp32_json: dict[str, list] = {}  # converted together below: one numpy call instead of one per input
    offset, rows, first = 0, None, None
    for tensor in request["inputs"]:
        name, length, value, offset = _input(tensor, specs, binary, offset)
        if name in arrays or name in fp32_json:
            raise V2Error(f"input {name!r} appears twice")
        if rows is None:
            rows, first = length, name
        elif length != rows:
            raise V2Error(f"input {name!r} has {length} rows but {first!r} has {rows}: "
                          "every input needs the same batch size")
        if type(value) is list:
            fp32_json[name] = value
        else:
            arrays[name] = value
    if fp32_json:
        arrays.update(_fp32_columns(fp32_json, rows, specs))
    if offset != len(binary):
        raise V2Error(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise V2Error(f"missing input(s) {', '.join(map(repr, missing))}: the model needs "
                      f"{', '.join(specs)}")
    arrays = {n: arrays[n] for n in specs}  # the model's order, whatever order the client used
    if rows > max_batch:
        raise V2Error(f"batch of {rows} rows is above this server's limit of {max_batch}: split the request")
    parameters = request.get("parameters") or {}
    outputs, binary_out = None, bool(parameters.get("binary_data_output", False))
    if isinstance(request.get("outputs"), list):
        outputs = [o.get("name") for o in request["outputs"] if isinstance(o, dict)]
        binary_out = binary_out or any((o.get("parameters") or {}).get("binary_data") for o in request["outputs"]
                                       if isinstance(o, dict))
    request_id = request.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, arrays, rows, outputs, binary_out)


def _input(tensor: object, specs: dict[str, InputSpec], binary: memoryview, offset: int
           ) -> tuple[str, int, np.ndarray | list, int]:
    """(name, rows, [rows, 1] array — or the raw list of an FP32 JSON input, converted later —, offset)."""
    # The hot path of every request: plain type checks, no generator expressions.
    name = tensor.get("name") if type(tensor) is dict else None
    if type(name) is not str:
        raise V2Error("each input must be an object with a 'name'")
    spec = specs.get(name)
    if spec is None:
        raise V2Error(f"unknown input {name!r}: the model's inputs are {', '.join(specs)}")
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        raise V2Error(f"input {name!r} has datatype {datatype!r}: expected {spec.datatype!r}")
    shape = tensor.get("shape")
    rows = shape[0] if type(shape) is list and shape else None
    if (type(rows) is not int or rows < 1 or len(shape) > 2
            or (len(shape) == 2 and (type(shape[1]) is not int or shape[1] != 1))):
        raise V2Error(f"input {name!r} has shape {shape!r}: expected [N, 1] or [N] with N >= 1")
    parameters = tensor.get("parameters")
    size = parameters.get("binary_data_size") if type(parameters) is dict else None
    if size is not None:
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise V2Error(f"input {name!r} claims {size!r} bytes of binary data but only "
                          f"{len(binary) - offset} are left in the body")
        array = _from_binary(name, spec.datatype, binary[offset:offset + size], rows, spec.nullable)
        offset += size
    elif "data" in tensor:
        data = tensor["data"]
        if datatype == "FP32" and type(data) is list:
            return name, rows, data, offset
        array = _from_json(name, spec.datatype, data, rows, spec.nullable)
    else:
        raise V2Error(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    return name, rows, array.reshape(rows, 1), offset


def _fp32_columns(columns: dict[str, list], rows: int, specs: dict[str, InputSpec]) -> dict[str, np.ndarray]:
    """All FP32 JSON inputs as one [k, rows] block (views of it per input); on any problem, convert
    input by input so the error names the input at fault."""
    try:
        block = np.array(list(columns.values()), dtype=np.float32)
        ok = block.size == rows * len(columns) and math.isfinite(np.add.reduce(block, axis=None, dtype=np.float64))
    except (ValueError, TypeError):
        ok = False
    if not ok:
        return {name: _from_json(name, "FP32", data, rows, specs[name].nullable).reshape(rows, 1)
                for name, data in columns.items()}
    block = block.reshape(len(columns), rows)
    return {name: block[i].reshape(rows, 1) for i, name in enumerate(columns)}


def _check_finite(name: str, array: np.ndarray, nullable: bool = False) -> None:
    # One float64 reduction instead of isfinite().all(): the sum of float32 values cannot overflow
    # float64, so it is finite exactly when every value is (NaN and ±inf propagate).
    if math.isfinite(np.add.reduce(array, dtype=np.float64)):
        return
    if not nullable:
        raise V2Error(f"input {name!r} contains NaN or infinity (this model takes no missing values in it)")
    if np.isinf(array).any():  # NaN is a missing value the model handles; infinity is never a value
        raise V2Error(f"input {name!r} contains infinity")


def _from_json(name: str, datatype: str, data: object, rows: int, nullable: bool = False) -> np.ndarray:
    if not isinstance(data, list):
        raise V2Error(f"input {name!r}: 'data' must be a list")
    if datatype == "BYTES":
        flat = _flat(data)
        if len(flat) != rows:
            raise V2Error(f"input {name!r} has {len(flat)} values for shape [{rows}, 1]")
        if nullable:  # null is a missing category: the model's "" (its missing bucket)
            flat = ["" if v is None else v for v in flat]
        if not all(isinstance(v, str) for v in flat):
            raise V2Error(f"input {name!r} (BYTES) must hold strings" + ("" if nullable else
                                                                         " (this model takes no nulls in it)"))
        return np.array(flat, dtype=object)
    try:
        array = np.asarray(data, dtype=NUMPY_OF[datatype])
    except (ValueError, TypeError):
        array = _with_nulls(name, datatype, data) if nullable else None
        if array is None:
            raise V2Error(f"input {name!r} ({datatype}) holds values that are not numbers of that type, "
                          "or rows of different lengths") from None
    if array.size != rows:
        raise V2Error(f"input {name!r} has {array.size} values for shape [{rows}, 1]")
    if datatype == "FP32":
        _check_finite(name, array, nullable)
    return array


def _flat(data: list) -> list:
    """JSON tensor data as one list: [[a], [b]] (row-major, as clients send [N, 1]) or [a, b]."""
    return data if (not data or not isinstance(data[0], list)) else [v for row in data for v in row]


def _with_nulls(name: str, datatype: str, data: list) -> np.ndarray | None:
    """FP32 JSON data with nulls (missing values) as NaN; None if it holds anything else but numbers."""
    if datatype != "FP32":
        return None
    try:
        return np.array([np.nan if v is None else v for v in _flat(data)], dtype=np.float32)
    except (ValueError, TypeError):
        return None


def _from_binary(name: str, datatype: str, raw: memoryview, rows: int, nullable: bool = False) -> np.ndarray:
    if datatype == "BYTES":
        values, pos = [], 0
        try:
            for _ in range(rows):
                (length,) = struct.unpack_from("<I", raw, pos)
                pos += 4
                if pos + length > len(raw):
                    raise V2Error(f"input {name!r}: a BYTES element runs past its binary data")
                values.append(bytes(raw[pos:pos + length]).decode())
                pos += length
        except (struct.error, UnicodeDecodeError):
            raise V2Error(f"input {name!r}: BYTES data must be {rows} length-prefixed UTF-8 strings") from None
        if pos != len(raw):
            raise V2Error(f"input {name!r}: {len(raw) - pos} bytes left after {rows} BYTES elements")
        return np.array(values, dtype=object)
    dtype = np.dtype(NUMPY_OF[datatype])
    if len(raw) != rows * dtype.itemsize:
        raise V2Error(f"input {name!r}: {len(raw)} bytes of binary data for {rows} {datatype} values "
                      f"({rows * dtype.itemsize} expected)")
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    if datatype == "FP32":
        _check_finite(name, array, nullable)
    return array


def response(model_name: str, model_version: str, request: InferRequest, outputs: dict[str, np.ndarray]
             ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Encode the outputs as a V2 response: (body, extra headers)."""
    names = request.outputs or list(outputs)
    body: dict = {"model_name": model_name, "model_version": model_version, "outputs": []}
    if request.id is not None:
        body["id"] = request.id
    blobs = []
    for name in names:
        array = outputs[name]
        tensor: dict = {"name": name, "datatype": DATATYPE_OF[array.dtype], "shape": list(array.shape)}
        if request.binary_outputs:
            blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.ravel()
        body["outputs"].append(tensor)
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, [(b"content-type", b"application/json")]
    return b"".join([header, *blobs]), [(b"content-type", b"application/octet-stream"),
                                         (b"inference-header-content-length", str(len(header)).encode())]


def check_outputs(names: list[str] | None, available: list[str]) -> None:
    for name in names or ():
        if name not in available:
            raise V2Error(f"unknown output {name!r}: the model's outputs are {', '.join(available)}")


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
