"""`lakeloop serve --model`: verified loads from the signed registry, hot swaps under load, refusals that
keep the old version serving, API keys from Vault, inference logs committed to a lakeFS branch."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid

import httpx
import hvac
import lakefs
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as triton_grpc

from lakeloop.devstack import _proc
from lakeloop.registry import Registry, VaultSigner
from lakeloop.secrets import SERVING_PATH, VaultClient, VaultSettings
from tests.serving.conftest import lakeloop_serve, nan_on_zero_amount, raw_feature_model, rows

pytestmark = pytest.mark.lakefs


def _body(n: int = 2) -> bytes:
    return json.dumps({"inputs": [{"name": k, "shape": [n, 1], "datatype": "BYTES" if v.dtype == object else "FP32",
                                   "data": v.ravel().tolist()} for k, v in rows(n).items()]}).encode()


class Load:
    """`clients` keep-alive clients (HTTP, or gRPC through tritonclient) sending requests back to back
    until stopped; each client's answers are kept in order, as (status, version)."""

    def __init__(self, url: str, key: str, grpc: str | None = None, clients: int = 1) -> None:
        self.url, self.grpc, self.key = url, grpc, key
        self.by_client: list[list[tuple[int, str]]] = [[] for _ in range(clients)]
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(answers,), daemon=True)
                         for answers in self.by_client]

    @property
    def answers(self) -> list[tuple[int, str]]:
        return [a for answers in self.by_client for a in answers]

    def _run(self, answers: list) -> None:
        send = self._grpc_sender() if self.grpc else self._http_sender()
        while not self._stop.is_set() and len(answers) < 100_000:
            try:
                answers.append(send())
            except Exception as exc:  # every failure is a finding: the test asserts there are none
                self.errors.append(repr(exc))

    def _http_sender(self):
        client = httpx.Client(timeout=10)
        body, headers = _body(), {"Authorization": f"Bearer {self.key}"}

        def send() -> tuple[int, str]:
            answer = client.post(f"{self.url}/v2/models/fraud/infer", content=body, headers=headers)
            return answer.status_code, answer.json().get("model_version", "")
        return send

    def _grpc_sender(self):
        client = triton_grpc.InferenceServerClient(self.grpc)
        inputs = []
        for name, array in rows(2).items():
            tensor = triton_grpc.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        headers = {"authorization": f"Bearer {self.key}"}

        def send() -> tuple[int, str]:
            return 200, client.infer("fraud", inputs, headers=headers, client_timeout=10).get_response().model_version
        return send

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _wait_for(predicate, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize("transport, batching", [("http", False), ("http", True), ("grpc", True)])
def test_hot_swap_under_load_refuses_bad_versions(lakefs_server, vault, tmp_path, transport, batching):
    """Zero failed requests and one clean switch per client across a swap and two refusals; with
    batching on, requests are merged but never across versions."""
    name = f"reg-{uuid.uuid4().hex[:8]}"
    pipeline = VaultClient(VaultSettings(address=vault.address, **vault.approle("pipeline")))
    registry = Registry(lakefs_server.client(), name, VaultSigner(pipeline), f"{lakefs_server.namespace_prefix}/{name}")
    good = [raw_feature_model(tmp_path / f"m{seed}.onnx", seed) for seed in (0, 1)]
    for path in good:
        registry.register("fraud", {"model.onnx": path}, {"variant": "fp32"}, actor="test")
    registry.register("fraud", {"model.onnx": good[0]}, {"variant": "fp32"}, actor="test")  # v3: to be tampered with
    main = lakefs.Repository(name, client=lakefs_server.client()).branch("main")
    main.object("models/fraud/v3/model.onnx").upload(good[1].read_bytes())
    main.commit("tamper with v3's weights")
    broken = nan_on_zero_amount(good[0], tmp_path / "broken.onnx")
    registry.register("fraud", {"model.onnx": broken}, {"variant": "fp32"}, actor="test")  # v4: fails smoke
    registry.promote("fraud", 1, "production", actor="test")

    key = hvac.Client(vault.address, token=vault.root_token).secrets.kv.v2.read_secret_version(
        SERVING_PATH, raise_on_deleted_version=True)["data"]["data"]["api_keys"].split(",")[0]
    logs_repo = f"logs-{uuid.uuid4().hex[:8]}"
    env = {"LAKELOOP_LAKEFS_URL": lakefs_server.endpoint, "VAULT_ADDR": vault.address,
           "LAKELOOP_SERVING_APPROLE_FILE": str(vault.credentials["serving"])}
    args = ["--model", "fraud", "--registry", name, "--workers", "1", "--poll-seconds", "0.3",
            "--log-repository", logs_repo, "--log-storage-namespace", f"{lakefs_server.namespace_prefix}/{logs_repo}",
            "--log-interval", "0.5"]
    grpc = f"127.0.0.1:{_proc.free_port()}" if transport == "grpc" else None
    if grpc:
        args += ["--grpc-port", grpc.rsplit(":", 1)[1]]
    args += ["--max-batch-delay-us", "2000", "--preferred-batch", "16"] if batching else ["--no-batching"]
    with lakeloop_serve(args, tmp_path, env=env) as served:
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{served.url}/v2/models/fraud/infer", content=_body()).status_code == 401

        def serving() -> str:
            return httpx.get(f"{served.url}/v2/models/fraud", headers=auth).json()["versions"][0]

        assert serving() == "1"
        with Load(served.url, key, grpc, clients=4 if batching else 1) as load:
            _wait_for(lambda: len(load.answers) > 50, "traffic on v1")
            registry.promote("fraud", 2, "production", actor="test", reason="hot swap")
            _wait_for(lambda: serving() == "2", "the swap to v2")
            _wait_for(lambda: all(a and a[-1][1] == "2" for a in load.by_client), "traffic on v2")

            registry.promote("fraud", 3, "production", actor="test", reason="tampered")
            reload = httpx.post(f"{served.url}/v2/repository/models/fraud/load", headers=auth)
            assert reload.status_code == 400 and "does not match the signed manifest" in reload.json()["error"]
            registry.promote("fraud", 4, "production", actor="test", reason="broken")
            reload = httpx.post(f"{served.url}/v2/repository/models/fraud/load", headers=auth)
            assert reload.status_code == 400 and "non-finite" in reload.json()["error"]
            time.sleep(1)  # a few polls: the watcher must not load them either
            assert serving() == "2"
            count = len(load.answers)
            _wait_for(lambda: len(load.answers) > count + 50, "traffic after the refusals")

        assert load.errors == []
        assert {code for code, _ in load.answers} == {200}
        for answers in load.by_client:  # one clean switch, client by client
            versions = [v for _, v in answers]
            first_v2 = versions.index("2")
            assert set(versions[:first_v2]) == {"1"} and set(versions[first_v2:]) == {"2"}
        metrics = httpx.get(f"{served.url}/metrics", headers=auth).text
        if batching:  # four clients back to back: some of their requests shared a call
            calls, requests = (float(re.search(rf"^lakeloop_batcher_{k}_total ([\d.]+)$", metrics, re.M).group(1))
                               for k in ("calls", "requests"))
            assert requests >= len(load.answers) and calls < requests, metrics
        # each bad version is refused by the load request and, when its 0.3 s poll comes first, by the watcher
        refused = int(re.search(r'lakeloop_model_swaps_total\{model="fraud",outcome="refused"\} (\d+)',
                                metrics).group(1))
        assert 2 <= refused <= 4, metrics
        assert 'lakeloop_model_swaps_total{model="fraud",outcome="swapped"} 2' in metrics

        branch = lakefs.Repository(logs_repo, client=lakefs_server.client()).branch("inference-logs")

        def logged_versions() -> set[str]:
            found = set()
            for obj in branch.objects(prefix="inference/fraud/"):
                with branch.object(obj.path).reader("rb") as reader:
                    found |= set(pq.read_table(reader).column("model_version").to_pylist())
            return found

        _wait_for(lambda: logged_versions() == {"1", "2"}, "inference logs of both versions in lakeFS")
        commit = next(iter(branch.log(max_amount=1)))
        assert commit.metadata["source"] == "lakeloop-serve" and int(commit.metadata["rows"]) > 0
    assert key not in served.output()


def test_all_models_serves_each_registered_model_by_name(lakefs_server, vault, tmp_path):
    """`serve --all-models`: every model with a production version, found as it appears; each swaps on
    its own; Triton's repository index lists them; an unknown name is a 404 naming what is served."""
    name = f"reg-{uuid.uuid4().hex[:8]}"
    pipeline = VaultClient(VaultSettings(address=vault.address, **vault.approle("pipeline")))
    registry = Registry(lakefs_server.client(), name, VaultSigner(pipeline), f"{lakefs_server.namespace_prefix}/{name}")
    first, second = (raw_feature_model(tmp_path / f"m{seed}.onnx", seed) for seed in (0, 1))
    registry.register("alpha", {"model.onnx": first}, {"variant": "fp32"}, actor="test")
    registry.register("beta", {"model.onnx": second}, {"variant": "fp32"}, actor="test")  # no alias yet
    registry.promote("alpha", 1, "production", actor="test")
    key = hvac.Client(vault.address, token=vault.root_token).secrets.kv.v2.read_secret_version(
        SERVING_PATH, raise_on_deleted_version=True)["data"]["data"]["api_keys"].split(",")[0]
    auth = {"Authorization": f"Bearer {key}"}
    env = {"LAKELOOP_LAKEFS_URL": lakefs_server.endpoint, "VAULT_ADDR": vault.address,
           "LAKELOOP_SERVING_APPROLE_FILE": str(vault.credentials["serving"])}
    args = ["--all-models", "--registry", name, "--workers", "1", "--poll-seconds", "0.3", "--no-inference-logs"]
    with lakeloop_serve(args, tmp_path, env=env) as served:
        def index() -> dict[str, str]:
            answer = httpx.post(f"{served.url}/v2/repository/index", headers=auth)
            assert answer.status_code == 200, answer.text
            return {m["name"]: m["state"] for m in answer.json()}

        assert index() == {"alpha": "READY"}
        missing = httpx.post(f"{served.url}/v2/models/beta/infer", content=_body(), headers=auth)
        assert missing.status_code == 404 and "this server serves alpha" in missing.json()["error"]
        registry.promote("beta", 1, "production", actor="test")  # found by the watcher, no restart
        _wait_for(lambda: index() == {"alpha": "READY", "beta": "READY"}, "beta to be served")
        for model in ("alpha", "beta"):
            answer = httpx.post(f"{served.url}/v2/models/{model}/infer", content=_body(), headers=auth)
            assert answer.status_code == 200 and answer.json()["model_name"] == model
        registry.register("alpha", {"model.onnx": second}, {"variant": "fp32"}, actor="test")
        swapped = httpx.post(f"{served.url}/v2/repository/models/alpha/load", headers=auth)  # alias unchanged
        assert swapped.status_code == 200 and swapped.json() == {"name": "alpha", "version": "1", "swapped": False}
        unknown = httpx.post(f"{served.url}/v2/repository/models/gamma/load", headers=auth)
        assert unknown.status_code == 400 and "names no version" in unknown.json()["error"]
        assert index() == {"alpha": "READY", "beta": "READY"}  # nothing half-added
        assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200
        metrics = httpx.get(f"{served.url}/metrics", headers=auth).text
        assert 'lakeloop_model_info{model="alpha",version="1"' in metrics
        assert 'lakeloop_model_info{model="beta",version="1"' in metrics
