"""`lakeloop serve --onnx`: the Open Inference Protocol v2 as a standard client speaks it, and every bad
request answered with 400 and a V2 error body, never a 500 or a crash."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pyarrow.dataset as ds
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.serving.conftest import answer_of, lakeloop_serve, rows

KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    logs = tmp / "inference-logs"
    args = ["--onnx", str(model_file), "--name", "fraud", "--workers", "1", "--api-key", KEY, "--max-batch", "256",
            "--log-dir", str(logs), "--log-interval", "0.3"]
    with lakeloop_serve(args, tmp) as served:
        served.logs = logs
        yield served


def triton_inputs(batch: dict[str, np.ndarray], binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, array in batch.items():
        datatype = "BYTES" if array.dtype == object else "FP32"
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json"])
def test_standard_v2_client_gets_the_models_answers(server, model_file, binary):
    client = triton.InferenceServerClient(server.hostport)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("fraud")
    metadata = client.get_model_metadata("fraud", headers=dict(AUTH))
    assert [i["name"] for i in metadata["inputs"]] == list(rows(1))
    assert {i["datatype"] for i in metadata["inputs"]} == {"FP32", "BYTES"}

    batch = rows(37, seed=4)
    outputs = None if binary else [triton.InferRequestedOutput("probability", binary_data=False),
                                   triton.InferRequestedOutput("label", binary_data=False)]
    result = client.infer("fraud", triton_inputs(batch, binary), outputs=outputs, headers=dict(AUTH))
    expected = answer_of(model_file, batch)
    np.testing.assert_allclose(result.as_numpy("probability"), expected, rtol=1e-6)
    assert result.get_response()["model_name"] == "fraud"


def _body(batch: dict[str, np.ndarray], **overrides) -> dict:
    inputs = []
    for name, array in batch.items():
        datatype = "BYTES" if array.dtype == object else "FP32"
        inputs.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                       "data": array.ravel().tolist()})
    body = {"inputs": inputs}
    body.update(overrides)
    return body


def _with_input(body: dict, name: str, **changes) -> dict:
    for tensor in body["inputs"]:
        if tensor["name"] == name:
            tensor.update(changes)
    return body


def _binary(batch: dict[str, np.ndarray], amount_raw: bytes | None = None) -> tuple[bytes, dict]:
    header_inputs, blobs = [], []
    for name, array in batch.items():
        if array.dtype == object:
            blob = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in array.ravel())
            datatype = "BYTES"
        else:
            blob = array.astype("<f4").tobytes() if not (name == "amount" and amount_raw) else amount_raw
            datatype = "FP32"
        header_inputs.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                              "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    header = json.dumps({"inputs": header_inputs}).encode()
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


def _cases():
    two = rows(2)
    nan = two["amount"].copy()
    nan[1, 0] = np.nan
    inf_blob = np.array([1.0, np.inf], dtype="<f4").tobytes()
    return {
        "malformed JSON": (b'{"inputs": [', {}, "malformed JSON"),
        "not an object": (b"[1, 2]", {}, "non-empty 'inputs' list"),
        "unknown input": (_body(two, inputs=[*_body(two)["inputs"], {"name": "colour", "datatype": "FP32",
                                                                      "shape": [2, 1], "data": [1, 2]}]),
                          {}, "unknown input 'colour'"),
        "missing input": (_body({k: v for k, v in two.items() if k != "country"}), {}, "missing input(s) 'country'"),
        "wrong datatype": (_with_input(_body(two), "amount", datatype="INT64"), {}, "expected 'FP32'"),
        "wrong shape": (_with_input(_body(two), "amount", shape=[1, 2]), {}, "the model expects [-1, 1] (or [N]"),
        "wrong rank": (_with_input(_body(two), "amount", shape=[2, 1, 1]), {}, "has shape [2, 1, 1]"),
        "nested data deeper than the shape": (_with_input(_body(two), "amount", data=[[129.5], [[1.0]]]), {},
                                              "must hold numbers"),
        "text that looks like a number": (_with_input(_body(two), "amount", data=["129.5", 3.0]), {},
                                          "must hold numbers, not str"),
        "true in a number": (_with_input(_body(two), "amount", data=[True, 3.0]), {}, "must hold numbers, not bool"),
        "a string above the element limit": (_with_input(_body(two), "country", data=["x" * 70_000, "DE"]), {},
                                             "70,000-byte string"),
        "shape and data disagree": (_with_input(_body(two), "amount", data=[1.0, 2.0, 3.0]), {}, "3 values"),
        "text in a number": (_with_input(_body(two), "amount", data=["1", "x"]), {}, "must hold numbers, not str"),
        "number in a string": (_with_input(_body(two), "country", data=[1, 2]), {}, "must hold strings"),
        "batch sizes differ": (_with_input(_body(two), "amount", shape=[3, 1], data=[1, 2, 3]), {},
                               "every input needs the same batch size"),
        "NaN (JSON)": (json.dumps(_body({**two, "amount": nan})).encode(), {}, "malformed JSON"),
        "infinity (binary)": (*_binary(two, amount_raw=inf_blob), "input 'amount' contains infinity"),
        "null in a number (JSON)": (_with_input(_body(two), "amount", data=[1.0, "null"]), {}, "not str"),
        "binary size past the body": (_binary(two)[0][:-3], _binary(two)[1], "claims"),
        "bad header length": (_binary(two)[0], {"Inference-Header-Content-Length": "10x"}, "expected an integer"),
        "batch above the limit": (_body(rows(257)), {}, "above this server's limit of 256"),
        "unknown output": (_body(two, outputs=[{"name": "score"}]), {}, "unknown output 'score'"),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_bad_requests_get_400_with_a_v2_error(server, case):
    body, headers, message = _cases()[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = httpx.post(f"{server.url}/v2/models/fraud/infer", content=content, headers={**AUTH, **headers})
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200  # still serving


@pytest.mark.parametrize("binary", [True, False], ids=["binary NaN", "JSON null"])
def test_missing_values_are_inputs_of_a_lakeloop_model(server, model_file, binary):
    """A lakeloop model takes missing values as it was trained to (NaN numbers, "" or null categories)."""
    batch = rows(4, seed=19)  # rows of their own: the inference-log test looks for its rows by value
    batch["amount"][[0, 2], 0] = np.nan
    if binary:
        content, headers = _binary(batch)
    else:
        body = _body(batch)
        for tensor in body["inputs"]:  # JSON null: a missing number, a missing category
            if tensor["name"] == "amount":
                tensor["data"] = [None if v != v else v for v in tensor["data"]]
            if tensor["name"] == "country":
                tensor["data"][2] = None
        content, headers = json.dumps(body).encode(), {}
        batch["country"][2, 0] = ""
    answer = httpx.post(f"{server.url}/v2/models/fraud/infer", content=content, headers={**AUTH, **headers})
    assert answer.status_code == 200, answer.text
    served = next(o for o in answer.json()["outputs"] if o["name"] == "probability")
    expected = answer_of(model_file, batch).ravel()
    np.testing.assert_allclose(served["data"], expected, rtol=1e-6)
    assert np.isfinite(expected).all()


def test_a_model_that_declares_no_missing_values_refuses_them(tmp_path):
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])
    path = tmp_path / "plain.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with lakeloop_serve(["--onnx", str(path), "--api-key", "k", "--workers", "1", "--no-inference-logs"],
                        tmp_path) as plain:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1], "data": [1.0, None]}]}
        refused = httpx.post(f"{plain.url}/v2/models/plain/infer", json=body, headers={"Authorization": "Bearer k"})
        assert refused.status_code == 400 and "'x'" in refused.json()["error"]
        nan = np.array([1.0, np.nan], "<f4").tobytes()
        header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1],
                                         "parameters": {"binary_data_size": len(nan)}}]}).encode()
        refused = httpx.post(f"{plain.url}/v2/models/plain/infer", content=header + nan, headers={
            "Authorization": "Bearer k", "Inference-Header-Content-Length": str(len(header))})
        assert refused.status_code == 400 and "no missing values" in refused.json()["error"]


def test_api_key_required_except_on_health(server):
    body = json.dumps(_body(rows(1))).encode()
    assert httpx.post(f"{server.url}/v2/models/fraud/infer", content=body).status_code == 401
    wrong = httpx.post(f"{server.url}/v2/models/fraud/infer", content=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/v2/models/fraud").status_code == 401
    for open_path in ("/v2/health/live", "/v2/health/ready", "/v2/models/fraud/ready"):
        assert httpx.get(server.url + open_path).status_code == 200
    assert httpx.post(f"{server.url}/v2/models/other/infer", content=body, headers=AUTH).status_code == 404
    assert KEY not in server.output()  # the key is never logged


def test_metrics_count_requests_and_name_the_version(server, model_file):
    import hashlib

    body = json.dumps(_body(rows(3))).encode()
    for _ in range(3):
        assert httpx.post(f"{server.url}/v2/models/fraud/infer", content=body, headers=AUTH).status_code == 200
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    counts = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
    assert counts['lakeloop_inference_requests_total{model="fraud",code="200"}'] >= 3
    assert counts['lakeloop_inference_latency_seconds_bucket{le="+Inf"}'] >= 3
    version = hashlib.sha256(model_file.read_bytes()).hexdigest()[:12]
    assert f'lakeloop_model_info{{model="fraud",version="{version}"' in text


def test_inference_logs_hold_inputs_outputs_and_version(server):
    skipped = rows(3, seed=10)  # a deploy smoke test: answered, not logged as traffic
    assert httpx.post(f"{server.url}/v2/models/fraud/infer", content=json.dumps(_body(skipped)).encode(),
                      headers={**AUTH, "Lakeloop-Log": "skip"}).status_code == 200
    batch = rows(5, seed=9)
    body = json.dumps(_body(batch, id="log-check")).encode()
    answer = httpx.post(f"{server.url}/v2/models/fraud/infer", content=body, headers=AUTH).json()
    deadline = __import__("time").monotonic() + 10
    while True:
        files = list(server.logs.rglob("*.parquet"))
        table = ds.dataset(files, format="parquet").to_table() if files else None
        if table is not None and np.isin(batch["amount"].ravel(), table["amount"].to_numpy()).all():
            break
        assert __import__("time").monotonic() < deadline, "inference logs were not written"
        __import__("time").sleep(0.2)
    frame = table.to_pandas()
    logged = frame[frame["amount"].isin(batch["amount"].ravel())]
    assert list(logged["country"]) == list(batch["country"].ravel())
    answered = {o["name"]: o["data"] for o in answer["outputs"]}
    np.testing.assert_allclose(logged["output_probability"].to_numpy(), answered["probability"], rtol=1e-6)
    assert list(logged["output_label"]) == answered["label"]
    assert set(logged["model_version"]) == {answer["model_version"]}
    assert not frame["amount"].isin(skipped["amount"].ravel()).any()


def test_open_mode_warns_once_and_env_keys_work(model_file, tmp_path):
    with lakeloop_serve(["--onnx", str(model_file), "--workers", "1", "--no-inference-logs"], tmp_path) as served:
        body = json.dumps(_body(rows(1))).encode()
        assert httpx.post(f"{served.url}/v2/models/fraud/infer", content=body).status_code == 200
        assert served.output().count("WITHOUT authentication") == 1
    with lakeloop_serve(["--onnx", str(model_file), "--workers", "1"], tmp_path,
                        env={"LAKELOOP_API_KEYS": "a-key, b-key", "VAULT_ADDR": ""}) as served:
        body = json.dumps(_body(rows(1))).encode()
        assert httpx.post(f"{served.url}/v2/models/fraud/infer", content=body).status_code == 401
        ok = httpx.post(f"{served.url}/v2/models/fraud/infer", content=body, headers={"Authorization": "Bearer b-key"})
        assert ok.status_code == 200 and "WITHOUT" not in served.output()


def test_two_workers_serve_the_same_model(model_file, tmp_path):
    with lakeloop_serve(["--onnx", str(model_file), "--workers", "2", "--api-key", KEY, "--no-inference-logs"],
                        tmp_path) as served:
        client = triton.InferenceServerClient(served.hostport)
        for _ in range(10):
            result = client.infer("fraud", triton_inputs(rows(2), True), headers=dict(AUTH))
            assert result.as_numpy("probability").shape == (2, 1)
        with pytest.raises(InferenceServerException, match="401"):
            client.infer("fraud", triton_inputs(rows(2), True))
