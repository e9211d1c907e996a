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

from tests._examples import generate_transactions

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
    drift = httpx.get(f"{api}/deployments/name/monitor-drift/fraud").json()
    assert [s["schedule"]["cron"] for s in drift["schedules"]] == ["0 * * * *"]
    automations = httpx.post(f"{api}/automations/filter", json={}).json()
    retrain_triggers = {e for a in automations for e in a["trigger"].get("expect", [])
                        if any(action.get("deployment_id") for action in a["actions"])}
    assert {"lakeloop.drift.detected", "lakeloop.data.published", "lakeloop.retrain.requested"} <= retrain_triggers

    batch = tmp_path / "batch.parquet"
    generate_transactions(400, seed=31).to_parquet(batch)
    repository = f"w-{uuid.uuid4().hex[:10]}"
    flow_run = run_deployment("ingest-data/fraud", timeout=0, parameters={
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


def test_kubernetes_pools_render_gpu_and_cpu_jobs(prefect_api):
    """The documented Kubernetes pools: created and deployed to on a real Prefect server, and every
    deployment's Job rendered from its pool's template as a worker renders it (no cluster here)."""
    import json

    from prefect.utilities.templating import apply_values

    default = prefect_cli("work-pool", "get-default-base-job-template", "--type", "kubernetes")
    assert default.returncode == 0, default.stderr
    prefect_default = json.loads(default.stdout)
    for kind in ("gpu", "cpu"):
        template = ROOT / "deploy" / "prefect" / f"kubernetes-{kind}-pool.json"
        # still a superset of Prefect's own template: a Prefect upgrade that adds a variable shows here
        assert set(prefect_default["variables"]["properties"]) <= set(
            json.loads(template.read_text())["variables"]["properties"])
        created = prefect_cli("work-pool", "create", f"lakeloop-{kind}", "--type", "kubernetes",
                              "--base-job-template", str(template), "--overwrite")
        assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect_cli("deploy", "--prefect-file", "deploy/prefect/kubernetes.yaml", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    api = PREFECT_API_URL.value()

    def job_of(deployment: str) -> dict:
        found = httpx.get(f"{api}/deployments/name/{deployment}").json()
        pool = httpx.get(f"{api}/work_pools/{found['work_pool_name']}").json()["base_job_template"]
        values = {k: v["default"] for k, v in pool["variables"]["properties"].items() if "default" in v}
        values |= found["job_variables"]
        return apply_values(pool["job_configuration"], values)["job_manifest"]

    train = job_of("retrain/fraud")["spec"]["template"]["spec"]
    container = train["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["resources"]["requests"] == {"cpu": "32", "memory": "256Gi"}
    assert train["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["image"] == "lakeloop-pipeline:0.1.0" and train["serviceAccountName"] == "lakeloop-pipeline"

    drift = job_of("monitor-drift/fraud")["spec"]["template"]["spec"]
    limits = drift["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and limits == {"cpu": "8", "memory": "16Gi"}
    rollback = job_of("rollback-model/fraud")["spec"]["template"]["spec"]
    assert rollback["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert rollback["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    env = {e["name"]: e["value"] for e in drift["containers"][0]["env"]} if isinstance(
        drift["containers"][0]["env"], list) else drift["containers"][0]["env"]
    assert env["LAKELOOP_SERVING_URL"] == "http://lakeloop-serve.lakeloop.svc:8080"
    assert not any("secret" in str(v).lower() or "token" in str(v).lower() for v in env.values())


def test_deployments_yaml_renders_for_any_project():
    """`lakeloop project add`'s rendering: every deployment under the project's name, its folder as the
    parameter, triggers on its own events only, schedules paused unless asked for."""
    import yaml

    from lakeloop.devstack.projects import render
    from lakeloop.project import resolve_project

    template = yaml.safe_load((ROOT / "deployments.yaml").read_text())
    demand = resolve_project(ROOT / "examples" / "demand")
    spec = render(template, demand, schedules=False)
    assert [d["name"] for d in template["deployments"]] == ["fraud"] * 8  # the template is left alone
    assert [d["name"] for d in spec["deployments"]] == ["demand"] * 8
    assert all("project:demand" in d["tags"] and "project:fraud" not in d["tags"] for d in spec["deployments"])
    with_project = [d for d in spec["deployments"] if "project" in (d.get("parameters") or {})]
    assert {d["entrypoint"].split(":")[1] for d in with_project} == {
        "ingest_data", "train_model", "deploy_model", "rollback_model", "retrain", "monitor_drift"}
    assert {d["parameters"]["project"] for d in with_project} == {demand.root}
    triggers = [t for d in spec["deployments"] for t in d.get("triggers") or []]
    assert sorted(t["name"] for t in triggers) == ["retrain demand on drift", "retrain demand on new data",
                                                   "retrain demand on request"]
    assert all(t["match"] == {"lakeloop.project": "demand"} for t in triggers)
    assert [s["active"] for d in spec["deployments"] for s in d.get("schedules") or []] == [False]
    assert [s["active"] for d in render(template, demand, True)["deployments"] for s in d.get("schedules") or []] == [
        True]
