"""`lakeloop serve --grpc-port`: V2 over gRPC as KServe's and Triton's clients speak it (tritonclient.grpc,
unchanged), the same answers, checks, auth and metrics as over HTTP."""

from __future__ import annotations

import subprocess

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from lakeloop.devstack import _proc
from tests.serving.conftest import ROOT, answer_of, grpc_inputs_of, lakeloop_serve, rows
from tests.serving.test_any_onnx_model import DATATYPES, assert_outputs, batch_of, expected_of, tensors_model

KEY = "grpc-key"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module", params=["lakeloop", "uvicorn"])
def servers(model_file, tmp_path_factory, request):
    """The fraud model and the all-datatypes model, each over HTTP and gRPC — on lakeloop's front (HTTP/2 for
    gRPC, the default) and on uvicorn with grpc.aio: one service, two transports, the same answers."""
    tmp = tmp_path_factory.mktemp("grpc")
    tensors_model(tmp / "tensors.onnx")
    fraud_port, tensors_port = _proc.free_port(), _proc.free_port()
    common = ["--workers", "1", "--api-key", KEY, "--no-inference-logs", "--http", request.param]
    with lakeloop_serve(["--onnx", str(model_file), "--name", "fraud", "--grpc-port", str(fraud_port), *common],
                        tmp) as fraud, \
            lakeloop_serve(["--onnx", str(tmp / "tensors.onnx"), "--grpc-port", str(tensors_port), *common],
                           tmp) as tensors:
        yield {"fraud": (fraud, f"127.0.0.1:{fraud_port}"), "tensors": (tensors, f"127.0.0.1:{tensors_port}"),
               "layer": request.param}


def test_probes_and_metadata(servers):
    stack = "lakeloop's compiled front (HTTP/2)" if servers["layer"] == "lakeloop" else "grpcio (grpc.aio)"
    assert f"grpc     port {servers['tensors'][1].split(':')[1]}, {stack}" in servers["tensors"][0].output()
    client = triton.InferenceServerClient(servers["tensors"][1])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tensors")
    assert not client.is_model_ready("tensors", "7")
    metadata = client.get_model_metadata("tensors", headers=AUTH, as_json=True)
    shapes = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]}
    assert shapes["image"] == ("FP32", [-1, 3, 8, 8]) and shapes["half"] == ("FP16", [-1, 3])
    assert client.get_server_metadata(headers=AUTH).name == "lakeloop"


def test_a_lakeloop_model_answers_as_over_http_with_nan(servers, model_file):
    """Binary (raw) tensors, NaN in a nullable number: the same probabilities as ONNX Runtime, and as HTTP."""
    http, address = servers["fraud"]
    batch = rows(9, seed=3)
    batch["amount"][2, 0] = np.nan
    client = triton.InferenceServerClient(address)
    result = client.infer("fraud", grpc_inputs_of(batch), headers=AUTH, request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("probability"), answer_of(model_file, batch), rtol=1e-6)
    bearer = {"Authorization": f"Bearer {KEY}"}
    version = httpx.get(f"{http.url}/v2/models/fraud", headers=bearer).json()["versions"][0]
    assert result.get_response().id == "r-1" and result.get_response().model_version == version
    metrics = httpx.get(f"{http.url}/metrics", headers=bearer).text
    assert 'lakeloop_inference_requests_total{model="fraud",code="200"} 1' in metrics


def test_every_datatype_and_requested_outputs(servers):
    client = triton.InferenceServerClient(servers["tensors"][1])
    batch = batch_of(4, seed=5)
    expected = expected_of(batch)
    outputs = [triton.InferRequestedOutput(n) for n in expected]
    result = client.infer("tensors", grpc_inputs_of(batch, DATATYPES), outputs=outputs, headers=AUTH)
    assert_outputs(result.as_numpy, batch)
    top = client.infer("tensors", grpc_inputs_of(batch, DATATYPES), headers=AUTH,
                       outputs=[triton.InferRequestedOutput("scores", class_count=1)])
    assert [int(v.decode().split(":")[1]) for v in top.as_numpy("scores").ravel()] == list(
        expected["scores"].argmax(axis=1))


def test_typed_contents_work_as_well_as_raw(servers, model_file):
    """KServe's clients may send `contents` instead of raw bytes: both are the protocol."""
    fraud = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(servers["fraud"][1]))
    batch = rows(3, seed=8)
    request = service_pb2.ModelInferRequest(model_name="fraud")
    for name, array in batch.items():
        tensor = request.inputs.add(name=name, datatype="BYTES" if array.dtype == object else "FP32", shape=[3, 1])
        if array.dtype == object:
            tensor.contents.bytes_contents.extend(v.encode() for v in array.ravel())
        else:
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
    answer = fraud.ModelInfer(request, metadata=list(AUTH.items()))
    probability = np.frombuffer(answer.raw_output_contents[0], "<f4")
    assert answer.outputs[0].name == "probability"
    np.testing.assert_allclose(probability, answer_of(model_file, batch).ravel(), rtol=1e-6)

    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(servers["tensors"][1]))
    batch = batch_of(2, seed=6)
    request = service_pb2.ModelInferRequest(model_name="tensors")
    for name, array in batch.items():
        tensor = request.inputs.add(name=name, datatype=DATATYPES[name], shape=array.shape)
        if name == "half":  # FP16 has no typed field in the protocol (it travels raw only)
            continue
        field = {"FP32": "fp32_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                 "BOOL": "bool_contents", "BYTES": "bytes_contents"}[DATATYPES[name]]
        values = [v.encode() for v in array.ravel()] if array.dtype == object else array.ravel().tolist()
        getattr(tensor.contents, field).extend(values)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, metadata=list(AUTH.items()))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'half' (FP16) has no typed contents field" in info.value.details()
    batch.pop("half")
    del request.inputs[5]
    with pytest.raises(grpc.RpcError) as info:  # a missing input is named
        stub.ModelInfer(request, metadata=list(AUTH.items()))
    assert "missing input(s) 'half'" in info.value.details()


BAD = {
    "wrong fixed dimension": (lambda b: b.update(x=b["x"][:, :16]), "input 'x' has shape [2, 16]: the model "
                                                                     "expects [-1, 32]"),
    "wrong rank": (lambda b: b.update(image=b["image"].reshape(2, 192)), "input 'image' has shape [2, 192]"),
    "batch sizes differ": (lambda b: b.update(count=b["count"][:1]), "every input needs the same batch size"),
    "infinity": (lambda b: b["x"].__setitem__((0, 0), np.inf), "input 'x' contains NaN or infinity"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_are_invalid_argument_naming_the_input(servers, case):
    client = triton.InferenceServerClient(servers["tensors"][1])
    batch = batch_of(2)
    change, message = BAD[case]
    change(batch)
    with pytest.raises(InferenceServerException) as info:
        client.infer("tensors", grpc_inputs_of(batch, DATATYPES), headers=AUTH)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and message in info.value.message()
    assert client.is_server_ready()


def test_wrong_datatype_and_auth(servers):
    client = triton.InferenceServerClient(servers["tensors"][1])
    batch = batch_of(2)
    wrong = [*grpc_inputs_of({k: v for k, v in batch.items() if k != "pixels"}, DATATYPES),
             _input("pixels", batch["pixels"].astype(np.int32), "INT32")]
    with pytest.raises(InferenceServerException) as info:
        client.infer("tensors", wrong, headers=AUTH)
    assert "input 'pixels' has datatype 'INT32': expected 'UINT8'" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("tensors", grpc_inputs_of(batch, DATATYPES))
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as info:
        client.infer("tensors", grpc_inputs_of(batch, DATATYPES), headers={"authorization": "Bearer wrong"})
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as info:
        client.infer("nothing", grpc_inputs_of(batch, DATATYPES), headers=AUTH)
    assert info.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'nothing'" in info.value.message()


@pytest.fixture(scope="session")
def kserve_python() -> str:
    """KServe's own venv (`make kserve`, built here on first use: KServe cannot install beside lakeloop)."""
    built = subprocess.run(["make", "-C", str(ROOT), "kserve"], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, f"`make kserve` failed:\n{built.stdout}{built.stderr}"
    return str(ROOT / ".venv-kserve" / "bin" / "python")


def _kserve_clients(python: str, address: str, url: str, key: str, batch: dict, tmp) -> subprocess.CompletedProcess:
    np.savez(tmp / "in.npz", **batch)
    return subprocess.run([python, str(ROOT / "tests" / "serving" / "_kserve_client.py"), address, url, "tensors",
                           key, str(tmp / "in.npz"), str(tmp / "out.npz")], capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # builds KServe's venv on a fresh clone (a few minutes)
def test_kserves_own_grpc_and_rest_clients_work_unchanged(servers, kserve_python, tmp_path):
    """KServe's InferenceGRPCClient and InferenceRESTClient, from KServe 0.21 itself: probes, then every
    datatype as binary tensors over both protocols; a wrong key is refused to them as well."""
    http, address = servers["tensors"]
    batch = batch_of(5, seed=4)
    done = _kserve_clients(kserve_python, address, http.url, KEY, batch, tmp_path)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "out.npz", allow_pickle=True) as got:
        assert list(got["probes"]) == [True] * 6  # live, ready, model ready: gRPC, then REST
        for protocol in ("grpc", "rest"):
            assert_outputs(lambda name, protocol=protocol: got[f"{protocol}/{name}"], batch)
    refused = _kserve_clients(kserve_python, address, http.url, "wrong", batch, tmp_path)
    assert refused.returncode == 1 and "missing or invalid API key" in refused.stderr


def _input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_the_committed_messages_are_generated_from_the_proto():
    """`make proto` output is what is committed: the proto and the module cannot drift apart."""
    import runpy

    generate = runpy.run_path(str(ROOT / "lakeloop" / "serving" / "proto" / "generate.py"))["generate"]
    assert generate() == (ROOT / "lakeloop" / "serving" / "_inference_pb2.py").read_text(), "run `make proto`"
