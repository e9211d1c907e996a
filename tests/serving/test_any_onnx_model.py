"""`lakeloop serve --onnx` serves any ONNX model: tensors of any rank, every V2 datatype, fixed and free
dimensions; standard clients get its answers, and a wrong shape, rank or datatype is a 400 naming the input."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import numpy as np
import onnx
import pyarrow.dataset as ds
import pytest
import tritonclient.http as triton
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from tests.serving.conftest import lakeloop_serve

KEY = "any-model-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WEIGHTS = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)


def tensors_model(path) -> None:
    """Seven inputs of assorted ranks and types, each answered by an output a test can predict."""
    value = helper.make_tensor_value_info
    inputs = [value("x", TensorProto.FLOAT, ["batch", 32]), value("image", TensorProto.FLOAT, ["batch", 3, 8, 8]),
              value("count", TensorProto.INT64, ["batch"]), value("pixels", TensorProto.UINT8, ["batch", 2]),
              value("flag", TensorProto.BOOL, ["batch"]), value("half", TensorProto.FLOAT16, ["batch", 3]),
              value("word", TensorProto.STRING, ["batch", 1])]
    outputs = [value("scores", TensorProto.FLOAT, ["batch", 4]), value("channel_mean", TensorProto.FLOAT, ["batch", 3]),
               value("count_plus_one", TensorProto.INT64, ["batch"]), value("pixel_sum", TensorProto.INT32, ["batch"]),
               value("not_flag", TensorProto.BOOL, ["batch"]), value("half_doubled", TensorProto.FLOAT16, ["batch", 3]),
               value("word_again", TensorProto.STRING, ["batch", 1])]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["scores"]),
             helper.make_node("ReduceMean", ["image", "hw"], ["channel_mean"], keepdims=0),
             helper.make_node("Add", ["count", "one"], ["count_plus_one"]),
             helper.make_node("Cast", ["pixels"], ["pixels32"], to=TensorProto.INT32),
             helper.make_node("ReduceSum", ["pixels32", "last"], ["pixel_sum"], keepdims=0),
             helper.make_node("Not", ["flag"], ["not_flag"]),
             helper.make_node("Add", ["half", "half"], ["half_doubled"]),
             helper.make_node("Identity", ["word"], ["word_again"])]
    inits = [numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(np.array([2, 3], np.int64), "hw"),
             numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array([1], np.int64),
                                                                                          "last")]
    graph = helper.make_graph(nodes, "tensors", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def batch_of(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 32)).astype(np.float32),
            "image": rng.normal(size=(n, 3, 8, 8)).astype(np.float32),
            "count": rng.integers(-5, 5, size=n).astype(np.int64),
            "pixels": rng.integers(0, 256, size=(n, 2)).astype(np.uint8),
            "flag": rng.integers(0, 2, size=n).astype(bool),
            "half": rng.normal(size=(n, 3)).astype(np.float16),
            "word": np.array([[f"w{i}é"] for i in range(n)], dtype=object)}


def expected_of(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"scores": batch["x"] @ WEIGHTS, "channel_mean": batch["image"].mean(axis=(2, 3)),
            "count_plus_one": batch["count"] + 1,
            "pixel_sum": batch["pixels"].astype(np.int32).sum(axis=1, dtype=np.int32),
            "not_flag": ~batch["flag"], "half_doubled": batch["half"] + batch["half"], "word_again": batch["word"]}


def assert_outputs(got: Callable[[str], np.ndarray], batch: dict[str, np.ndarray]) -> None:
    """Every output of the tensors model as `expected_of` says: strings as text, numbers in their datatype
    and shape (`got`: an output's array by name, as a client returned it)."""
    for name, expected in expected_of(batch).items():
        array = got(name)
        assert array.shape == expected.shape, name
        if expected.dtype == object:
            assert [v.decode() if isinstance(v, bytes) else v for v in array.ravel()] == list(expected.ravel()), name
        else:
            assert array.dtype == expected.dtype, name
            np.testing.assert_allclose(array.astype(np.float64), expected.astype(np.float64), rtol=1e-5, atol=1e-5)


DATATYPES = {"x": "FP32", "image": "FP32", "count": "INT64", "pixels": "UINT8", "flag": "BOOL", "half": "FP16",
             "word": "BYTES"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("any-model")
    tensors_model(tmp / "tensors.onnx")
    logs = tmp / "logs"
    with lakeloop_serve(["--onnx", str(tmp / "tensors.onnx"), "--name", "tensors", "--workers", "1", "--api-key", KEY,
                         "--log-dir", str(logs), "--log-interval", "0.3"], tmp) as served:
        served.logs = logs
        yield served


def triton_inputs(batch: dict[str, np.ndarray], binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, array in batch.items():
        tensor = triton.InferInput(name, list(array.shape), DATATYPES[name])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_it_becomes_ready_and_reports_real_shapes_and_datatypes(server):
    """The smoke inference is built from the declared shapes (free dimensions 1), so the model is ready."""
    client = triton.InferenceServerClient(server.hostport)
    assert client.is_server_ready() and client.is_model_ready("tensors")
    metadata = client.get_model_metadata("tensors", headers=dict(AUTH))
    shapes = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]}
    assert shapes == {"x": ("FP32", [-1, 32]), "image": ("FP32", [-1, 3, 8, 8]), "count": ("INT64", [-1]),
                      "pixels": ("UINT8", [-1, 2]), "flag": ("BOOL", [-1]), "half": ("FP16", [-1, 3]),
                      "word": ("BYTES", [-1, 1])}
    outputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["outputs"]}
    assert outputs["scores"] == ("FP32", [-1, 4]) and outputs["pixel_sum"] == ("INT32", [-1])
    assert outputs["half_doubled"] == ("FP16", [-1, 3]) and outputs["word_again"] == ("BYTES", [-1, 1])


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json"])
def test_tritonclient_gets_every_output_of_every_datatype(server, binary):
    client = triton.InferenceServerClient(server.hostport)
    batch = batch_of(5, seed=1)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in expected_of(batch)]
    result = client.infer("tensors", triton_inputs(batch, binary), outputs=outputs, headers=dict(AUTH))
    assert_outputs(result.as_numpy, batch)


def test_requested_outputs_each_binary_or_json_and_classification(server):
    client = triton.InferenceServerClient(server.hostport)
    batch = batch_of(3, seed=2)
    outputs = [triton.InferRequestedOutput("scores", binary_data=True),
               triton.InferRequestedOutput("count_plus_one", binary_data=False),
               triton.InferRequestedOutput("channel_mean", binary_data=False, class_count=2)]
    result = client.infer("tensors", triton_inputs(batch, True), outputs=outputs, headers=dict(AUTH))
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["scores", "count_plus_one", "channel_mean"]
    by_name = {o["name"]: o for o in response["outputs"]}
    assert "binary_data_size" in by_name["scores"]["parameters"] and "data" in by_name["count_plus_one"]
    np.testing.assert_allclose(result.as_numpy("scores"), batch["x"] @ WEIGHTS, rtol=1e-5, atol=1e-5)
    # classification: each row's two largest channel means, "value:index"
    means = batch["image"].mean(axis=(2, 3))
    top = by_name["channel_mean"]["data"]
    assert by_name["channel_mean"]["shape"] == [3, 2] and by_name["channel_mean"]["datatype"] == "BYTES"
    for row in range(3):
        order = np.argsort(-means[row])[:2]
        assert [int(t.split(":")[1]) for t in top[row * 2:row * 2 + 2]] == list(order)
        assert float(top[row * 2].split(":")[0]) == pytest.approx(means[row, order[0]], rel=1e-4)


def _json_body(batch: dict[str, np.ndarray], **change) -> dict:
    inputs = [{"name": n, "datatype": DATATYPES[n], "shape": list(a.shape), "data": a.ravel().tolist()}
              for n, a in batch.items()]
    for tensor in inputs:
        tensor.update(change.get(tensor["name"], {}))
    return {"inputs": inputs}


BAD = {
    "wrong fixed dimension": ({"x": {"shape": [2, 31], "data": [0.0] * 62}}, "input 'x' has shape [2, 31]: the "
                                                                             "model expects [-1, 32]"),
    "wrong rank": ({"image": {"shape": [2, 192]}}, "input 'image' has shape [2, 192]: the model expects "
                                                   "[-1, 3, 8, 8] (rank 4"),
    "rank 2 for a rank 1 input": ({"count": {"shape": [2, 1]}}, "input 'count' has shape [2, 1]"),
    "wrong datatype": ({"pixels": {"datatype": "INT32"}}, "input 'pixels' has datatype 'INT32': expected 'UINT8'"),
    "value out of range": ({"pixels": {"data": [1, 2, 3, 300]}}, "input 'pixels' (UINT8) holds a value outside 0..255"),
    "float in an integer": ({"count": {"data": [1.5, 2]}}, "input 'count' (INT64) must hold integers, not float"),
    "number in a BOOL": ({"flag": {"data": [1, 0]}}, "input 'flag' (BOOL) must hold true/false, not int"),
    "infinity in FP16": ({"half": {"data": [1e6, 0, 0, 0, 0, 0]}}, "input 'half' contains NaN or infinity"),
    "number in a string": ({"word": {"data": [1, 2]}}, "input 'word' (BYTES) must hold strings, not int"),
    "zero-sized dimension": ({"x": {"shape": [0, 32], "data": []}}, "expected a list of positive integers"),
    "batch sizes differ": ({"count": {"shape": [3], "data": [1, 2, 3]}}, "every input needs the same batch size"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_wrong_shape_rank_or_datatype_is_a_400_naming_the_input(server, case):
    change, message = BAD[case]
    body = _json_body(batch_of(2), **change)
    answer = httpx.post(f"{server.url}/v2/models/tensors/infer", content=json.dumps(body), headers=AUTH)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"], answer.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_tritonclient_sees_the_400(server):
    client = triton.InferenceServerClient(server.hostport)
    batch = batch_of(2)
    batch["x"] = batch["x"][:, :16]
    with pytest.raises(InferenceServerException, match="input 'x' has shape \\[2, 16\\]"):
        client.infer("tensors", triton_inputs(batch, True), headers=dict(AUTH))


def test_a_one_by_one_json_input_is_not_a_500(tmp_path):
    """`"data": [[129.5]]` for a [1, 1] FP32 input once raised a TypeError (500) in the finite check."""
    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Identity", ["v"], ["out"])], "one",
                              [value("v", TensorProto.FLOAT, [1, 1])], [value("out", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, tmp_path / "one.onnx")
    with lakeloop_serve(["--onnx", str(tmp_path / "one.onnx"), "--workers", "1", "--api-key", KEY], tmp_path) as s:
        body = {"inputs": [{"name": "v", "datatype": "FP32", "shape": [1, 1], "data": [[129.5]]}]}
        answer = httpx.post(f"{s.url}/v2/models/one/infer", json=body, headers=AUTH)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [129.5]
        wrong = {"inputs": [{"name": "v", "datatype": "FP32", "shape": [2, 1], "data": [1.0, 2.0]}]}
        answer = httpx.post(f"{s.url}/v2/models/one/infer", json=wrong, headers=AUTH)
        assert answer.status_code == 400 and "the model expects [1, 1]" in answer.json()["error"]


def test_inference_logs_hold_tensors_as_lists(server):
    """An input of several values per row is one list column (row-major); a [N, 1] one a plain column."""
    batch = batch_of(4, seed=3)
    client = triton.InferenceServerClient(server.hostport)
    client.infer("tensors", triton_inputs(batch, True), headers=dict(AUTH))
    def this_request():
        files = list(server.logs.rglob("*.parquet"))
        rows = ds.dataset([str(f) for f in files]).to_table().to_pylist() if files else []
        return next((r for r in rows if r["word"] == "w0é" and r["count"] == batch["count"][0]), None)

    # other tests share the server and its log: wait for this request's own record, not any rows
    logged = None
    deadline = time.monotonic() + 30
    while logged is None and time.monotonic() < deadline:
        time.sleep(0.2)
        logged = this_request()
    assert logged is not None, "the request was not logged within 30 s"
    assert logged["x"] == pytest.approx(batch["x"][0].tolist())
    assert logged["image"] == pytest.approx(batch["image"][0].ravel().tolist())
    assert logged["pixels"] == batch["pixels"][0].tolist() and logged["flag"] == bool(batch["flag"][0])
    assert logged["output_scores_0"] == pytest.approx(float((batch["x"] @ WEIGHTS)[0, 0]), rel=1e-5)
    assert logged["model_name"] == "tensors"
