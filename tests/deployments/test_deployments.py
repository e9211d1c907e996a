"""deployments.yaml: `prefect deploy` accepts it, and a process worker runs a deployment from it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import lakefs
import pytest
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from lakeloop.data.generate import generate_transactions

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.lakefs


def prefect_cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "LAKELOOP_PROJECT_DIR": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_deploy_and_run_through_a_process_worker(data_blocks, lakefs_server, tmp_path):
    created = prefect_cli("work-pool", "create", "lakeloop-process", "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect_cli("deploy", "--prefect-file", "deployments.yaml", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    api = PREFECT_API_URL.value()
    drift = httpx.get(f"{api}/deployments/name/monitor-drift/monitor-drift").json()
    assert [s["schedule"]["cron"] for s in drift["schedules"]] == ["0 * * * *"]
    automations = httpx.post(f"{api}/automations/filter", json={}).json()
    retrain_triggers = {e for a in automations for e in a["trigger"].get("expect", [])
                        if any(action.get("deployment_id") for action in a["actions"])}
    assert {"lakeloop.drift.detected", "lakeloop.data.published", "lakeloop.retrain.requested"} <= retrain_triggers

    batch = tmp_path / "batch.parquet"
    generate_transactions(400, seed=31).to_parquet(batch)
    repository = f"w-{uuid.uuid4().hex[:10]}"
    flow_run = run_deployment("ingest-data/ingest-data", timeout=0, parameters={
        "source": str(batch), "data": {"repository": repository, "lakefs_block": data_blocks,
                                       "storage_namespace": f"{lakefs_server.namespace_prefix}/{repository}"}})
    worker = prefect_cli("worker", "start", "--pool", "lakeloop-process", "--run-once", timeout=240)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

    from prefect import get_client

    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(flow_run.id)
    assert finished.state.is_completed(), finished.state
    main = lakefs.Repository(repository, client=lakefs_server.client()).branch("main")
    assert [o.path for o in main.objects() if o.path.endswith(".parquet")]
