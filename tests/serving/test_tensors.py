"""The compiled V2 input parser (lakeloop/serving/_tensors.c) against the Python one, request by request.

The compiled parser may pass on any request (the Python parser then takes it or names what is wrong),
but what it takes must be exactly what the Python parser takes, to the same arrays. Every datatype, ranks
1 to 4, fixed and free dimensions, JSON (flat and nested) and binary tensors, missing values, and a
seeded fuzz of broken requests; the requests real clients send must take the compiled path."""

from __future__ import annotations

import copy
import random
import struct
import zlib

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from lakeloop.serving import _grpc, _tensors
from lakeloop.serving import _inference_pb2 as pb
from lakeloop.serving import _protocol as v2

LIMITS = v2.Limits(max_batch=64, max_string_bytes=40)
NUMERIC = [d for d in v2.NUMPY_OF]
SHAPES = [(-1, 1), (-1,), (-1, 3), (-1, 2, 2), (2, 3), (-1, 1, 2, 1)]


def specs_of(*inputs: tuple[str, str, tuple[int, ...], bool]) -> v2.Inputs:
    return v2.Inputs({name: v2.InputSpec(name, datatype, shape, nullable)
                      for name, datatype, shape, nullable in inputs})


def values_of(datatype: str, count: int, rng: random.Random) -> list:
    if datatype == "BYTES":
        return [rng.choice(["", "a", "DE", "groceries", "çé€"]) for _ in range(count)]
    if datatype == "BOOL":
        return [rng.random() < 0.5 for _ in range(count)]
    if datatype in v2.FLOATS:
        return [rng.choice([0, 1, -3, 0.5, 129.25, -1e-3, 2.0**10]) for _ in range(count)]
    info = np.iinfo(v2.NUMPY_OF[datatype])
    return [rng.choice([int(info.min), 0, 1, int(info.max)]) for _ in range(count)]


def concrete(shape: tuple[int, ...], rows: int) -> list[int]:
    return [rows if d == -1 else d for d in shape]


def nested(flat: list, shape: list[int]) -> list:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0]
    return [nested(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def binary_of(datatype: str, values: list) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
    return np.array(values, dtype=v2.WIRE_DTYPE[datatype]).tobytes()


def both(tensors: list, specs: v2.Inputs, body: bytes = b"", start: int | None = None):
    """(the Python parser's result or its V2Error, the compiled result or None); fails where they disagree."""
    start = len(body) if start is None else start
    try:
        python = v2._inputs(tensors, specs, memoryview(body)[start:], LIMITS)
    except v2.V2Error as exc:
        python = exc
    compiled = _tensors.inputs(tensors, *specs.table, body, start, LIMITS.max_string_bytes, LIMITS.max_batch)
    agree(python, compiled, specs)
    return python, compiled


def agree(python, compiled, specs: v2.Inputs) -> None:
    """What the compiled parser took (None: it passed), the Python parser took to the same arrays."""
    if compiled is None:
        return
    assert not isinstance(python, v2.V2Error), f"the compiled parser took what Python refuses ({python})"
    arrays, rows = compiled
    assert rows == python[1]
    assert list(arrays) == list(python[0]) == list(specs)
    for name, want in python[0].items():
        got = arrays[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if want.dtype == object:
            assert got.tolist() == want.tolist(), name
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("encoding", ["json", "nested", "binary"])
def test_what_clients_send_takes_the_compiled_path_to_the_same_arrays(datatype, shape, encoding):
    rng = random.Random(zlib.crc32(repr((datatype, shape, encoding)).encode()))  # noqa: S311 (test data, seeded)
    specs = specs_of(("x", datatype, shape, False), ("other", "FP32", (-1, 1), False))
    for rows in (1, 2, 5):
        dims = concrete(shape, rows)
        batch = dims[0] if shape[0] == -1 else rows
        x = values_of(datatype, int(np.prod(dims)), rng)
        other = values_of("FP32", batch, rng)
        body = b"{}"
        if encoding == "binary":
            blob = binary_of(datatype, x)
            tensor = {"name": "x", "datatype": datatype, "shape": dims, "parameters": {"binary_data_size": len(blob)}}
            body += blob
        else:
            tensor = {"name": "x", "datatype": datatype, "shape": dims,
                      "data": nested(x, dims) if encoding == "nested" else x}
        tensors = [{"name": "other", "datatype": "FP32", "shape": [batch, 1], "data": other}, tensor]
        python, compiled = both(tensors, specs, body, 2)
        assert not isinstance(python, v2.V2Error), python
        if datatype == "FP16" and encoding != "binary":
            assert compiled is None  # numpy rounds to half precision: the Python parser does it
        else:
            assert compiled is not None, "a request every client sends missed the compiled parser"


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "BYTES"])
@pytest.mark.parametrize("nullable", [True, False], ids=["nullable", "not-nullable"])
def test_missing_values_agree(datatype, nullable):
    specs = specs_of(("x", datatype, (-1, 1), nullable))
    both([{"name": "x", "datatype": datatype, "shape": [3, 1], "data": [None, None, None]}], specs)
    mixed = [1.5, None, 2] if datatype != "BYTES" else ["a", None, "b"]
    both([{"name": "x", "datatype": datatype, "shape": [3], "data": mixed}], specs)
    if datatype != "BYTES":
        for special in (np.nan, np.inf, -np.inf):
            raw = np.array([1, special], dtype=v2.WIRE_DTYPE[datatype]).tobytes()
            python, _ = both([{"name": "x", "datatype": datatype, "shape": [2, 1],
                               "parameters": {"binary_data_size": len(raw)}}], specs, raw, 0)
            assert isinstance(python, v2.V2Error) != (nullable and np.isnan(special))


BROKEN = {
    "bool in an int": ("INT32", [True]), "int in a bool": ("BOOL", [1]), "float in an int": ("INT64", [1.0]),
    "str in a float": ("FP32", ["1.5"]), "int in a str": ("BYTES", [1]), "above INT8": ("INT8", [128]),
    "below INT8": ("INT8", [-129]), "negative UINT": ("UINT32", [-1]), "above UINT64": ("UINT64", [2**64]),
    "above INT64": ("INT64", [2**63]), "FP32 overflow": ("FP32", [1e39]), "a huge int in FP32": ("FP32", [2**60]),
    "a long string": ("BYTES", ["x" * 41]), "a long UTF-8 string": ("BYTES", ["€" * 14]),
    "lists and values at one level": ("FP32", [[1.0], 2.0]), "a dict": ("FP64", [{}]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_values_python_refuses_are_never_taken(case):
    datatype, data = BROKEN[case]
    python, compiled = both([{"name": "x", "datatype": datatype, "shape": [1, 1], "data": data}],
                            specs_of(("x", datatype, (-1, 1), False)))
    assert isinstance(python, v2.V2Error) or case == "a huge int in FP32"
    assert compiled is None


def test_a_seeded_fuzz_of_broken_requests_agrees():
    """Mutations of good requests (keys dropped or changed, shapes, counts, types, binary sizes): whatever the
    compiled parser takes, the Python parser takes to the same arrays (`both` checks it)."""
    rng = random.Random(7)  # noqa: S311 (a seeded fuzz, not a secret)

    def junk_value():  # a fresh copy: a mutated junk list must not become part of itself (JSON has no cycles)
        return copy.deepcopy(rng.choice(junk))

    specs = specs_of(("a", "FP32", (-1, 1), True), ("b", "BYTES", (-1, 1), False), ("c", "INT64", (-1, 3), False),
                     ("d", "UINT8", (2, 2), False))
    junk = [None, True, 0, -1, 1.5, "x", [], [1], {}, {"binary_data_size": 3}, [[1, 2, 3]], 2**70, "FP32"]
    taken = refused = 0
    for _ in range(4000):
        rows = rng.choice([1, 2, 3])
        c = values_of("INT64", rows * 3, rng)
        d_raw = binary_of("UINT8", values_of("UINT8", 4, rng))
        tensors = [{"name": "a", "datatype": "FP32", "shape": [rows, 1], "data": values_of("FP32", rows, rng)},
                   {"name": "b", "datatype": "BYTES", "shape": [rows], "data": values_of("BYTES", rows, rng)},
                   {"name": "c", "datatype": "INT64", "shape": [rows, 3], "data": nested(c, [rows, 3])},
                   {"name": "d", "datatype": "UINT8", "shape": [2, 2], "parameters": {"binary_data_size": 4}}]
        body = b"{}" + d_raw
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            tensor = rng.choice(tensors)
            action = rng.randrange(7)
            if action == 0:
                tensor.pop(rng.choice(list(tensor)))
            elif action == 1:
                tensor[rng.choice(["name", "datatype", "shape", "data", "parameters"])] = junk_value()
            elif action == 2 and "shape" in tensor and type(tensor["shape"]) is list and tensor["shape"]:
                tensor["shape"][rng.randrange(len(tensor["shape"]))] = rng.choice([0, 1, 2, 4, -1, True])
            elif action == 3 and type(tensor.get("data")) is list and tensor["data"]:
                tensor["data"][rng.randrange(len(tensor["data"]))] = junk_value()
            elif action == 4:
                tensors.append(copy.deepcopy(rng.choice(tensors)))
            elif action == 5:
                tensors.remove(tensor)
            else:
                body = rng.choice([body[:-1], body + b"\0", body])
        python, compiled = both(tensors, specs, body, 2)
        taken += compiled is not None
        refused += isinstance(python, v2.V2Error)
    assert taken > 500 and refused > 1000  # both sides of the line were exercised


def grpc_both(request, specs: v2.Inputs):
    """gRPC's raw contents: (the Python parse or its V2Error, the compiled one or None), as `both`."""
    raw = request.raw_input_contents
    try:
        python = _grpc._inputs(request, raw, specs, LIMITS)
    except v2.V2Error as exc:
        python = exc
    compiled = v2.compiled_grpc(request.SerializeToString(), specs, LIMITS)
    agree(python, compiled, specs)
    return python, compiled


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_grpc_raw_contents_take_the_compiled_path_to_the_same_arrays(datatype, shape):
    rng = random.Random(zlib.crc32(repr((datatype, shape)).encode()))  # noqa: S311 (test data, seeded)
    specs = specs_of(("x", datatype, shape, False), ("other", "FP32", (-1, 1), False))
    for rows in (1, 3):
        dims = concrete(shape, rows)
        batch = dims[0] if shape[0] == -1 else rows
        x, other = values_of(datatype, int(np.prod(dims)), rng), values_of("FP32", batch, rng)
        request = pb.ModelInferRequest(model_name="m", raw_input_contents=[binary_of("FP32", other),
                                                                           binary_of(datatype, x)])
        request.inputs.add(name="other", datatype="FP32", shape=[batch, 1])
        request.inputs.add(name="x", datatype=datatype, shape=dims)
        python, compiled = grpc_both(request, specs)
        assert not isinstance(python, v2.V2Error), python
        assert compiled is not None, "tritonclient's raw contents missed the compiled parser"
        # broken: one byte short, a wrong datatype, a wrong shape, shared-memory parameters
        short = pb.ModelInferRequest()
        short.CopyFrom(request)
        short.raw_input_contents[1] = short.raw_input_contents[1][:-1]
        wrong_type = pb.ModelInferRequest()
        wrong_type.CopyFrom(request)
        wrong_type.inputs[1].datatype = "FP64" if datatype != "FP64" else "FP32"
        wrong_shape = pb.ModelInferRequest()
        wrong_shape.CopyFrom(request)
        wrong_shape.inputs[1].shape[-1] += 1
        shared = pb.ModelInferRequest()
        shared.CopyFrom(request)
        shared.inputs[1].parameters["shared_memory_region"].string_param = "r"
        for broken in (short, wrong_type, wrong_shape, shared):
            python, compiled = grpc_both(broken, specs)
            assert isinstance(python, v2.V2Error) and compiled is None, (python, compiled)


def grpc_wire_both(message: bytes, specs: v2.Inputs):
    """A serialized request, as the service parses it: (Python's result or V2Error, compiled or None), or None
    where the service refuses it before either parser (not protobuf; no raw contents; a count mismatch)."""
    try:
        request = pb.ModelInferRequest.FromString(message)
    except DecodeError:
        return None
    raw = request.raw_input_contents
    if not raw or len(raw) != len(request.inputs):
        return None
    try:
        python = _grpc._inputs(request, raw, specs, LIMITS)
    except v2.V2Error as exc:
        python = exc
    compiled = v2.compiled_grpc(message, specs, LIMITS)
    agree(python, compiled, specs)
    return python, compiled


def _field(number: int, wire: int, payload: bytes) -> bytes:
    def varint(v: int) -> bytes:
        out = b""
        while True:
            out += bytes([(v & 0x7F) | (0x80 if v > 0x7F else 0)])
            v >>= 7
            if not v:
                return out
    key = varint(number << 3 | wire)
    return key + (varint(len(payload)) + payload if wire == 2 else payload)


def test_grpc_wire_forms_protobuf_allows_agree():
    """Unpacked shapes, fields in any order and repeated, unknown fields, the request's other fields."""
    specs = specs_of(("x", "FP32", (-1, 2), False), ("s", "BYTES", (-1, 1), False))
    x, s = binary_of("FP32", [1.5, 2.0, -3.0, 4.25]), binary_of("BYTES", ["DE", "fr"])
    unpacked_x = _field(2, 2, b"FP32") + _field(3, 0, b"\x02") + _field(1, 2, b"x") + _field(3, 0, b"\x02")
    tensor_s = _field(1, 2, b"s") + _field(2, 2, b"BYTES") + _field(3, 2, b"\x02\x01") + _field(9, 2, b"??")
    message = (_field(1, 2, b"m") + _field(7, 2, x) + _field(5, 2, unpacked_x) + _field(3, 2, b"req-1") +
               _field(6, 2, _field(1, 2, b"probability")) + _field(5, 2, tensor_s) + _field(7, 2, s) +
               _field(99, 0, b"\x05"))
    python, compiled = grpc_wire_both(message, specs)
    assert compiled is not None and compiled[1] == 2
    assert compiled[0]["x"].tolist() == [[1.5, 2.0], [-3.0, 4.25]] and compiled[0]["s"].ravel().tolist() == ["DE", "fr"]
    for declined in (_field(4, 2, b"\x0a\x01k"), _field(5, 2, _field(1, 5, b"\0\0\x80?"))):  # parameters, contents
        python, compiled = grpc_wire_both(message.replace(_field(5, 2, tensor_s), _field(5, 2, tensor_s + declined)),
                                          specs)
        assert compiled is None and not isinstance(python, v2.V2Error)


def test_a_seeded_fuzz_of_broken_grpc_messages_agrees():
    """Bytes flipped, dropped and inserted in a valid request: wherever protobuf still decodes it, the two
    parsers agree (the compiled one takes it to the same arrays, or passes)."""
    rng = random.Random(11)  # noqa: S311 (test data, seeded)
    specs = specs_of(("x", "FP32", (-1, 3), True), ("s", "BYTES", (-1, 1), False), ("n", "INT64", (-1,), False))
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[
        binary_of("FP32", [0.5, 1, 2, 3, 4, 5]), binary_of("BYTES", ["a", "DE"]), binary_of("INT64", [7, -9])])
    request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    request.inputs.add(name="s", datatype="BYTES", shape=[2, 1])
    request.inputs.add(name="n", datatype="INT64", shape=[2])
    good = request.SerializeToString()
    assert grpc_wire_both(good, specs)[1] is not None
    decoded = 0
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.5:
                data[at] = rng.randrange(256)
            elif choice < 0.75:
                del data[at]
            else:
                data.insert(at, rng.randrange(256))
        decoded += grpc_wire_both(bytes(data), specs) is not None
    assert decoded > 300  # most mutations still decode: the fuzz reaches both parsers


def test_the_inference_logs_compiled_codes_match_setdefault():
    """`_tensors.codes` (a string column's dictionary codes) against the Python loop it replaces; arrays it
    does not take are left to that loop."""
    rng = np.random.default_rng(4)
    table, expected_table = {"DE": 0}, {"DE": 0}
    out, expected = np.full(200, -1, np.int32), np.full(200, -1, np.int32)
    for start in (0, 64, 130):
        values = np.array(rng.choice(["DE", "FR", "", "çé€", "x" * 50], size=(64, 1)), dtype=object)
        if start == 130:
            values = values[:60]
        assert _tensors.codes(values, table, out, start) is True
        expected[start:start + values.size] = [expected_table.setdefault(v, len(expected_table))
                                               for v in values.ravel().tolist()]
    assert out.tolist() == expected.tolist() and table == expected_table
    strided = np.array(["a", "b", "c", "d"], dtype=object)[::2]
    assert _tensors.codes(strided, table, out, 0) is False  # not contiguous
    assert _tensors.codes(values, table, out, 190) is False  # past the end of `out`
    assert _tensors.codes(values, table, out.astype(np.int64), 0) is False
    assert out.tolist() == expected.tolist()


def log_request(rng: np.random.Generator, rows: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A request's inputs and outputs of every kind the log keeps as plain columns: [N] and [N, 1] numbers
    of several dtypes, strings, and an [N, 3] output that becomes three columns."""
    inputs = {"amount": rng.normal(size=(rows, 1)).astype(np.float32), "count": rng.integers(-9, 9, rows),
              "flag": rng.integers(0, 2, (rows, 1)).astype(bool), "half": rng.normal(size=rows).astype(np.float16),
              "pixel": rng.integers(0, 256, (rows, 1)).astype(np.uint8),
              "country": np.array(rng.choice(["DE", "FR", "", "çé€"], size=(rows, 1)), dtype=object)}
    outputs = {"probabilities": rng.random((rows, 3)), "label": rng.integers(0, 3, (rows, 1))}
    return inputs, outputs


def test_the_inference_logs_compiled_append_matches_the_python_loop():
    """`_tensors.append` (a request's columns into the log's segment in one call) against the Python loop it
    replaces: the same segments, codes and sizes, across segment boundaries."""
    from lakeloop.serving import _logs
    rng = np.random.default_rng(5)
    first = log_request(rng, 1)
    compiled, python = _logs._Columns(*first), _logs._Columns(*first)
    python.plan = None  # the Python loop
    assert compiled.plan is not None
    sizes = [1, 64, 1, 3, 7_000, 9_400, 1, 64, 1]  # crosses SEGMENT_ROWS (16,384) twice
    for at, rows in enumerate(sizes):
        inputs, outputs = log_request(rng, rows)
        compiled.append(float(at), rows, inputs, outputs)
        python.append(float(at), rows, inputs, outputs)
    assert len(compiled.segments) == len(python.segments) > 1
    assert compiled.filled == python.filled and compiled.size == python.size == sum(sizes)
    assert compiled.codes == python.codes
    for ours, theirs, filled in zip(compiled.segments, python.segments, python.filled, strict=True):
        for column in theirs:
            np.testing.assert_array_equal(ours[column][:filled], theirs[column][:filled], err_msg=column)
    assert compiled.table("m", "1").equals(python.table("m", "1"))


def test_the_compiled_append_declines_what_it_does_not_take_and_writes_nothing():
    from lakeloop.serving import _logs
    rng = np.random.default_rng(6)
    inputs, outputs = log_request(rng, 4)
    columns = _logs._Columns(inputs, outputs)
    columns.append(0.0, 4, inputs, outputs)
    before = {c: b.copy() for c, b in columns.segments[0].items()}
    sides = (inputs, outputs)
    wrong = [({**inputs, "amount": inputs["amount"][:3]}, outputs),  # a size that is not the rows
             ({**inputs, "amount": inputs["amount"].astype(np.float64)}, outputs),  # another dtype
             ({**inputs, "count": np.arange(8)[::2]}, outputs),  # not contiguous
             ({k: v for k, v in inputs.items() if k != "pixel"}, outputs),  # a column missing
             ({**inputs, "country": np.array([[1], [2], [3], [4]])}, outputs)]  # numbers for strings
    for case in wrong:
        assert _tensors.append(columns.plan, case, columns.buffers, 4, 4) is False
    assert _tensors.append(columns.plan, sides, columns.buffers, len(columns.buffers[0]) - 3, 4) is False
    for column, buffer in columns.segments[0].items():
        np.testing.assert_array_equal(buffer[:8], before[column][:8], err_msg=column)
    with pytest.raises(ValueError, match="'amount' has 3 values for 4 rows"):  # the Python loop names it
        columns.append(1.0, 4, *wrong[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.bool_, np.uint8, object])
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_the_compiled_pack_matches_concatenate(dtype, rows):
    rng = np.random.default_rng(rows)
    widths = [1, 1, 3, 1]
    columns = {f"c{i}": (rng.normal(size=(rows, w)) * 10).astype(dtype) if dtype is not object else
               np.array([[f"v{rng.integers(99)}é" for _ in range(w)] for _ in range(rows)], dtype=object)
               for i, w in enumerate(widths)}
    names = tuple(columns)
    packed = _tensors.pack(columns, names)
    expected = np.concatenate([columns[n] for n in names], axis=1)
    assert packed.dtype == expected.dtype and packed.shape == expected.shape == (rows, sum(widths))
    np.testing.assert_array_equal(packed, expected)
    if dtype is object:  # the packed array holds its own references: the columns can go
        del columns
        assert packed.tolist() == expected.tolist()


def test_the_compiled_pack_declines_what_concatenate_would_decide():
    a, b = np.zeros((4, 1), np.float32), np.ones((4, 1), np.float32)
    assert _tensors.pack({"a": a, "b": b.astype(np.float64)}, ("a", "b")) is None  # dtypes differ
    assert _tensors.pack({"a": a, "b": np.ones((3, 1), np.float32)}, ("a", "b")) is None  # rows differ
    assert _tensors.pack({"a": a, "b": np.ones((4, 2), np.float32)[:, :1]}, ("a", "b")) is None  # a view
    assert _tensors.pack({"a": a, "b": b.ravel()}, ("a", "b")) is None  # not [N, k]
    assert _tensors.pack({"a": a}, ("a", "b")) is None  # missing
    assert _tensors.pack({"a": a, "b": [[1.0]] * 4}, ("a", "b")) is None  # not an array


def protobuf_response(name: str, version: str, id_: str, tensors) -> bytes:
    answer = pb.ModelInferResponse(model_name=name, model_version=version, id=id_)
    for output, datatype, array in tensors:
        answer.outputs.add(name=output, datatype=datatype, shape=array.shape)
        answer.raw_output_contents.append(v2.to_binary(array))
    return answer.SerializeToString()


@pytest.mark.parametrize("datatype", [d for d in NUMERIC if d != "BYTES"])
@pytest.mark.parametrize("shape", [(1, 1), (64, 1), (3,), (0, 4), (), (2, 3, 8, 8), (200, 300)])
def test_the_compiled_grpc_response_is_protobufs_bytes(datatype, shape):
    rng = np.random.default_rng(len(shape))
    array = np.asarray(rng.normal(size=shape) * 50).astype(v2.NUMPY_OF[datatype])
    for name, version, id_ in [("fraud", "v1", ""), ("", "", ""), ("modèle", "7", "request-1"), ("m" * 300, "", "x")]:
        tensors = ((f"out_{datatype}", datatype, array), ("label", "INT64", np.arange(3, dtype=np.int64)))
        encoded = _tensors.grpc_response(name, version, id_, tensors)
        assert encoded == protobuf_response(name, version, id_, tensors)
        parsed = pb.ModelInferResponse.FromString(encoded)
        assert list(parsed.outputs[0].shape) == list(shape) and parsed.id == id_
        np.testing.assert_array_equal(np.frombuffer(parsed.raw_output_contents[0], array.dtype).reshape(shape), array)


def test_the_compiled_grpc_response_declines_what_protobuf_encodes_and_answers_agree():
    assert _tensors.grpc_response("m", "1", "", (("s", "BYTES", np.array(["a"], object)),)) is None
    assert _tensors.grpc_response("m", "1", "", (("v", "FP32", np.zeros((4, 4), np.float32)[:, :2]),)) is None
    assert _tensors.grpc_response("m", "1", "", (("b", "FP32", np.zeros(2, ">f4")),)) is None  # not native
    assert _tensors.grpc_response("m", "1", "", (("x", "FP32", [1.0]),)) is None  # not an array
    assert _tensors.grpc_response("m", "1", "", ()) == protobuf_response("m", "1", "", ())
    # through the service's encoder: a BYTES output (classification) goes through protobuf, the same message
    request = v2.InferRequest("r", {}, 2, [v2.OutputRequest("p", True, 1), v2.OutputRequest("q", True)], True)
    outputs = {"p": np.array([[0.2, 0.8], [0.9, 0.1]], np.float32), "q": np.array([1, 0], np.int64)}
    parsed = pb.ModelInferResponse.FromString(_grpc.response("m", "1", request, outputs, {"p": ["no", "yes"]}))
    assert [o.datatype for o in parsed.outputs] == ["BYTES", "INT64"] and parsed.id == "r"
    assert parsed.raw_output_contents[0] == v2.to_binary(np.array([["0.8:1:yes"], ["0.9:0:no"]], object))
