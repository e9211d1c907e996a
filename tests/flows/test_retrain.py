"""`retrain`: pull → train → compress → register → deploy as one flow run, against a real model server."""

from __future__ import annotations

import httpx
import pytest

from flows.retrain import retrain
from lakeloop.config import CompressionConfig, DeployConfig, TrainingConfig
from tests._examples import FRAUD_DIR
from tests.serving.conftest import lakeloop_serve

pytestmark = pytest.mark.lakefs


def test_retrain_runs_the_whole_loop_into_production(tmp_path, publish, registry_for, lakefs_server, vault):
    data, published = publish(4_000, 37)
    registry, reg = registry_for(data)
    name = registry.repository
    env = {"LAKELOOP_LAKEFS_URL": lakefs_server.endpoint, "VAULT_ADDR": vault.address,
           "LAKELOOP_SERVING_APPROLE_FILE": str(vault.credentials["serving"])}
    args = ["--model", "fraud", "--registry", name, "--workers", "1", "--poll-seconds", "0.5",
            "--log-repository", data.repository]
    with lakeloop_serve(args, tmp_path, env=env, ready=False) as served:
        result = retrain(project=FRAUD_DIR, data=data,
                         training=TrainingConfig(epochs=1, work_root=str(tmp_path / "runs")),
                         compression=CompressionConfig(candidates=["int8-dynamic"], latency_repeat=10),
                         registry=registry, deploy=DeployConfig(server_url=served.url,
                                                                work_root=str(tmp_path / "deploy")),
                         reason="test")
        assert result.data_commit == published.commit_id and result.version == 1
        assert result.deploy.status == "deployed" and result.deploy.smoke_rows > 0
        assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200
    assert reg.alias("fraud", "production") == 1
    assert reg.manifest("fraud", 1)["lineage"]["data_commit"] == published.commit_id
