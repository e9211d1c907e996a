"""Adaptive batching (`--max-batch-delay-us`): concurrent requests merged into one ONNX Runtime call, each
answered exactly as alone, over HTTP and gRPC; models that cannot be merged exactly run request by request."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pyarrow.dataset as ds
import pytest
import tritonclient.grpc as triton_grpc
from onnx import TensorProto, helper

from lakeloop.devstack import _proc
from tests.serving.conftest import answer_of, lakeloop_serve, rows

KEY = "batch-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def body_of(batch: dict[str, np.ndarray]) -> bytes:
    """JSON tensors; NaN (a missing number) as null."""
    def data(v: np.ndarray) -> list:
        return v.ravel().tolist() if v.dtype == object else [None if x != x else x for x in v.ravel().tolist()]
    return json.dumps({"inputs": [{"name": k, "shape": list(v.shape), "datatype": "BYTES" if v.dtype == object
                                   else "FP32", "data": data(v)} for k, v in batch.items()]}).encode()


def counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers=AUTH).text
    return {k: float(v) for k, v in re.findall(r"^(lakeloop_batcher_\w+) ([\d.]+)$", text, re.M)}


async def concurrently(url: str, bodies: list[bytes], headers: dict | None = None) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:
        return await asyncio.gather(*(client.post(f"{url}/v2/models/fraud/infer", content=b,
                                                  headers={**AUTH, **(headers or {})}) for b in bodies))


@pytest.fixture(scope="module")
def batched(model_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batched")
    logs = tmp / "logs"
    grpc_port = _proc.free_port()
    with lakeloop_serve(["--onnx", str(model_file), "--name", "fraud", "--workers", "1", "--api-key", KEY,
                         "--max-batch-delay-us", "3000", "--preferred-batch", "48", "--grpc-port", str(grpc_port),
                         "--log-dir", str(logs), "--log-interval", "0.3"], tmp) as served:
        served.logs, served.grpc = logs, f"127.0.0.1:{grpc_port}"
        yield served


def test_concurrent_requests_are_merged_and_each_answered_as_alone(batched, model_file):
    batches = [rows(n, seed=i) for i, n in enumerate([1, 3, 1, 7, 2, 1, 5, 1] * 4)]
    for batch in batches[::5]:
        batch["amount"][0, 0] = np.nan  # missing values travel through a merge too
    before = counters(batched.url)
    answers = asyncio.run(concurrently(batched.url, [body_of(b) for b in batches]))
    after = counters(batched.url)
    for answer, batch in zip(answers, batches, strict=True):
        assert answer.status_code == 200, answer.text
        got = np.asarray(answer.json()["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got, answer_of(model_file, batch).ravel(), rtol=1e-5, atol=1e-7)
    requests = after["lakeloop_batcher_requests_total"] - before.get("lakeloop_batcher_requests_total", 0)
    calls = after["lakeloop_batcher_calls_total"] - before.get("lakeloop_batcher_calls_total", 0)
    assert requests == 32 and calls < requests / 2, (requests, calls)


def test_bad_requests_in_a_busy_queue_fail_alone(batched):
    good = [body_of(rows(2, seed=i)) for i in range(6)]
    bad = json.loads(good[0])
    bad["inputs"][0]["shape"] = [2, 3]
    answers = asyncio.run(concurrently(batched.url, [*good[:3], json.dumps(bad).encode(), *good[3:]]))
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 200, 200, 200]


def test_merged_calls_are_logged_once_per_row_and_smoke_requests_not_at_all(batched):
    def logged_rows() -> int:
        files = list(batched.logs.rglob("*.parquet"))
        return ds.dataset([str(f) for f in files]).count_rows() if files else 0

    time.sleep(0.8)
    start = logged_rows()
    batches = [rows(n, seed=40 + n) for n in (1, 2, 3, 4, 5, 6)]
    asyncio.run(concurrently(batched.url, [body_of(b) for b in batches]))
    asyncio.run(concurrently(batched.url, [body_of(rows(9, seed=1))] * 3, headers={"Lakeloop-Log": "skip"}))
    deadline = time.monotonic() + 15
    while logged_rows() < start + 21 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.8)
    assert logged_rows() == start + 21


def test_grpc_requests_are_batched_too(batched, model_file):
    client = triton_grpc.InferenceServerClient(batched.grpc)
    batches = [rows(n, seed=60 + n) for n in (1, 2, 1, 4, 1, 3)]
    results = []

    def callback(result, error):
        results.append((result, error))

    for batch in batches:
        inputs = []
        for name, array in batch.items():
            tensor = triton_grpc.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        client.async_infer("fraud", inputs, callback, headers={"authorization": f"Bearer {KEY}"},
                           request_id=str(len(batch["amount"])))
    deadline = time.monotonic() + 20
    while len(results) < len(batches) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(results) == len(batches) and not [e for _, e in results if e is not None]
    by_rows = {len(b["amount"]): b for b in batches}
    for result, _ in results:
        batch = by_rows[int(result.get_response().id)]
        np.testing.assert_allclose(result.as_numpy("probability"), answer_of(model_file, batch), rtol=1e-5)


def test_models_that_cannot_be_merged_exactly_run_alone(tmp_path):
    """A free second dimension that differs between requests, and a fixed batch of one: never merged."""
    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("ReduceSum", ["tokens", "axis"], ["total"], keepdims=0)], "seq",
                              [value("tokens", TensorProto.FLOAT, ["batch", "length"])],
                              [value("total", TensorProto.FLOAT, ["batch"])],
                              [helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), tmp_path / "s.onnx")
    with lakeloop_serve(["--onnx", str(tmp_path / "s.onnx"), "--name", "fraud", "--workers", "1", "--api-key", KEY,
                         "--max-batch-delay-us", "3000"], tmp_path) as served:
        lengths = [3, 5, 3, 5, 8, 3]
        bodies = [json.dumps({"inputs": [{"name": "tokens", "datatype": "FP32", "shape": [2, n],
                                          "data": list(range(2 * n))}]}).encode() for n in lengths]
        answers = asyncio.run(concurrently(served.url, bodies))
        for answer, n in zip(answers, lengths, strict=True):
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"][0]["data"] == [sum(range(n)), sum(range(n, 2 * n))]
        assert counters(served.url)["lakeloop_batcher_requests_total"] == len(lengths)


def slow_model(path, width: int = 1024, layers: int = 24) -> None:
    """x [N, width] through `layers` MatMuls with one shared weight: a call of tens of milliseconds."""
    value = helper.make_tensor_value_info
    weight = (np.random.default_rng(0).standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]) for i in range(layers)]
    nodes[0].input[0], nodes[-1].output[0] = "x", "y"
    graph = helper.make_graph(nodes, "slow", [value("x", TensorProto.FLOAT, ["batch", width])],
                              [value("y", TensorProto.FLOAT, ["batch", width])],
                              [onnx.numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)


def test_without_a_wait_a_lone_request_runs_alone_and_requests_arriving_meanwhile_are_merged(tmp_path):
    """The default (--max-batch-delay-us 0): a request alone in the server runs at once, and those whose
    bytes arrive while the model is busy with it wait in the queue and run as one call after it."""
    slow_model(tmp_path / "slow.onnx")
    with lakeloop_serve(["--onnx", str(tmp_path / "slow.onnx"), "--name", "fraud", "--workers", "1",
                         "--api-key", KEY, "--no-inference-logs"], tmp_path) as served:
        rng = np.random.default_rng(1)
        inputs = [rng.standard_normal((1, 1024)).astype(np.float32) for _ in range(12)]
        bodies = [json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024],
                                          "data": x.ravel().tolist()}]}).encode() for x in inputs]
        before = counters(served.url)
        for body in bodies[:3]:  # one client, one request at a time: each alone
            assert httpx.post(f"{served.url}/v2/models/fraud/infer", content=body, headers=AUTH,
                              timeout=30).status_code == 200
        alone = counters(served.url)
        assert alone["lakeloop_batcher_calls_total"] - before["lakeloop_batcher_calls_total"] == 3
        assert alone["lakeloop_batcher_requests_total"] - before["lakeloop_batcher_requests_total"] == 3
        answers = asyncio.run(concurrently(served.url, bodies))
        after = counters(served.url)
        session = ort.InferenceSession(str(tmp_path / "slow.onnx"), providers=["CPUExecutionProvider"])
        for answer, x in zip(answers, inputs, strict=True):
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(np.asarray(answer.json()["outputs"][0]["data"], np.float32),
                                       session.run(None, {"x": x})[0].ravel(), rtol=1e-4, atol=1e-5)
        calls = after["lakeloop_batcher_calls_total"] - alone["lakeloop_batcher_calls_total"]
        assert after["lakeloop_batcher_requests_total"] - alone["lakeloop_batcher_requests_total"] == 12
        assert calls < 12, f"12 concurrent requests to a busy model took {calls:g} calls: none was merged"
