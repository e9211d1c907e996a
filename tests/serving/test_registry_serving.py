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

from lakeloop.registry import Registry, VaultSigner
from lakeloop.secrets import SERVING_PATH, VaultClient, VaultSettings
from tests.serving.conftest import lakeloop_serve, nan_on_zero_amount, raw_feature_model, rows

pytestmark = pytest.mark.lakefs


def _body(n: int = 2) -> bytes:
    return json.dumps({"inputs": [{"name": k, "shape": [n, 1], "datatype": "BYTES" if v.dtype == object else "FP32",
                                   "data": v.ravel().tolist()} for k, v in rows(n).items()]}).encode()


class Load:
    """Sends requests back to back from one keep-alive client until stopped; records every answer."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.headers = url, {"Authorization": f"Bearer {key}"}
        self.answers: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = _body()
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set() and len(self.answers) < 200_000:
                try:
                    answer = client.post(f"{self.url}/v2/models/fraud/infer", content=body, headers=self.headers)
                    self.answers.append((answer.status_code, answer.json().get("model_version", "")))
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def _wait_for(predicate, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_hot_swap_under_load_refuses_bad_versions(lakefs_server, vault, tmp_path):
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
    with lakeloop_serve(args, tmp_path, env=env) as served:
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{served.url}/v2/models/fraud/infer", content=_body()).status_code == 401

        def serving() -> str:
            return httpx.get(f"{served.url}/v2/models/fraud", headers=auth).json()["versions"][0]

        assert serving() == "1"
        with Load(served.url, key) as load:
            _wait_for(lambda: len(load.answers) > 50, "traffic on v1")
            registry.promote("fraud", 2, "production", actor="test", reason="hot swap")
            _wait_for(lambda: serving() == "2", "the swap to v2")
            _wait_for(lambda: load.answers[-1][1] == "2", "traffic on v2")

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
        versions = [v for _, v in load.answers]
        first_v2 = versions.index("2")
        assert set(versions[:first_v2]) == {"1"} and set(versions[first_v2:]) == {"2"}  # one clean switch
        metrics = httpx.get(f"{served.url}/metrics", headers=auth).text
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
