"""`deploy-model` against a real `lakeloop serve`: first deploy, a rejected worse challenger, and a forced
failure inside the transaction that rolls the alias and the server back."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from benchmarks._models import inverted, nan_on_zero_amount
from flows.deploy import deploy_model
from flows.rollback import rollback_model
from lakeloop.compression import export_onnx
from lakeloop.config import DeployConfig
from lakeloop.data._wap import read_dataset
from lakeloop.errors import DeploymentError
from lakeloop.modeling.features import FeatureSpec
from lakeloop.modeling.nets import TabularNet
from lakeloop.project import resolve_project
from lakeloop.secrets import SERVING_PATH, VaultClient, VaultSettings
from tests._events import prefect_events
from tests._examples import FRAUD_DIR
from tests.serving.conftest import lakeloop_serve

pytestmark = pytest.mark.lakefs


def trained_model(frame, path: Path, epochs: int = 30) -> Path:
    """A small net fitted in-process (full-batch Adam): informative enough to beat its inverse."""
    spec = FeatureSpec.fit(resolve_project("fraud"), frame)
    numeric, categorical = spec.encode(frame)
    y = torch.from_numpy(spec.labels(frame))
    torch.manual_seed(0)
    net = TabularNet(spec.numeric_width, spec.cardinalities, hidden=(32,))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    x_num, x_cat = torch.from_numpy(numeric), torch.from_numpy(categorical)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x_num, x_cat)[:, 0], y,
                                                                    pos_weight=torch.tensor(5.0))
        loss.backward()
        optimiser.step()
    return export_onnx(net.eval(), spec, path)


def test_deploy_reject_and_roll_back(tmp_path, publish, registry_for, lakefs_server, vault):
    data, published = publish(4_000, 31)
    frame = read_dataset(lakefs_server.client(), data.repository, published.commit_id, data.prefix)
    registry_config, registry = registry_for(data)
    name = registry_config.repository
    lineage = {"lineage": {"data_repository": data.repository, "data_commit": published.commit_id}}
    good = trained_model(frame, tmp_path / "good.onnx")
    for path in (good, inverted(good, tmp_path / "inverted.onnx"), nan_on_zero_amount(good, tmp_path / "nan.onnx")):
        registry.register("fraud", {"model.onnx": path}, {"variant": path.stem, **lineage}, actor="test")

    env = {"LAKELOOP_LAKEFS_URL": lakefs_server.endpoint, "VAULT_ADDR": vault.address,
           "LAKELOOP_SERVING_APPROLE_FILE": str(vault.credentials["serving"])}
    args = ["--model", "fraud", "--registry", name, "--workers", "1", "--poll-seconds", "0.5",
            "--no-inference-logs"]
    with lakeloop_serve(args, tmp_path, env=env, ready=False) as served:
        assert httpx.get(f"{served.url}/v2/health/ready").status_code == 503  # nothing promoted yet
        deploy = DeployConfig(server_url=served.url, work_root=str(tmp_path / "deploy"), smoke_rows=64)

        first = deploy_model(1, project=FRAUD_DIR, data=data, registry=registry_config, deploy=deploy)
        assert first.status == "deployed" and first.previous is None and first.smoke_rows == 64
        assert registry.alias("fraud", "production") == 1
        assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200

        worse = deploy_model(2, project=FRAUD_DIR, data=data, registry=registry_config, deploy=deploy)
        assert worse.status == "rejected" and registry.alias("fraud", "production") == 1
        assert worse.gate.challenger_score < worse.gate.champion_score - deploy.tolerance

        # v3 scores as v1 does on real rows (it passes the gate) but answers NaN for amount 0: the
        # server's smoke inference refuses it inside the transaction, which rolls everything back.
        state = deploy_model(3, project=FRAUD_DIR, data=data, registry=registry_config, deploy=deploy,
                             return_state=True)
        assert state.is_failed()
        error = state.result(raise_on_failure=False)
        assert isinstance(error, DeploymentError) and "non-finite" in str(error) and "back on v1" in str(error)
        assert registry.alias("fraud", "production") == 1
        history = registry.history("fraud", "production")
        assert [h["version"] for h in history] == [1, 3, 1]  # the failed move and its rollback are on record
        assert "rolled back" in history[0]["message"]
        key = VaultClient(VaultSettings(address=vault.address, **vault.approle("serving"))).read_key(
            SERVING_PATH, "api_keys")
        answer = httpx.get(f"{served.url}/v2/models/fraud", headers={"Authorization": f"Bearer {key}"})
        assert answer.json()["versions"] == ["1"]  # the server never stopped serving v1
        assert "refused v3" in served.output()

        registry.register("fraud", {"model.onnx": good}, {"variant": "good-again", **lineage}, actor="test")
        fourth = deploy_model(4, project=FRAUD_DIR, data=data, registry=registry_config, deploy=deploy)
        assert fourth.status == "deployed"
        assert rollback_model(FRAUD_DIR, "bad canary", registry=registry_config, deploy=deploy) == 1
        answer = httpx.get(f"{served.url}/v2/models/fraud", headers={"Authorization": f"Bearer {key}"})
        assert answer.json()["versions"] == ["1"] and registry.alias("fraud", "previous") == 4

    resource = f"lakeloop.model.{name}.fraud"
    deployed = prefect_events("lakeloop.model.deployed", resource, 2)
    rolled_back = prefect_events("lakeloop.model.rolled-back", resource, 2)
    assert sorted(e["payload"]["version"] for e in deployed) == [1, 4]
    assert sorted((e["payload"]["version"], e["payload"]["previous"]) for e in rolled_back) == [(1, 4), (3, 1)]
