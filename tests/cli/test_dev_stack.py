"""`lakeloop dev up | status | down` and `lakeloop demo` (what `make run` runs), through the CLI.

The demo test is the end-to-end test of the loop on a real local Prefect server with a process
worker: the retrain runs must be created by the automations of deployments.yaml (a lakeFS merge
through the installed action and webhook receiver, and a drift event), complete, and deploy; the
browser test then reads the same server's UI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from lakeloop.secrets import LAKEFS_PATH, WEBHOOK_PATH

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"prefect", "lakefs", "vault", "serving", "webhook", "worker"}


def lakeloop(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LAKEFS_", "LAKELOOP_"))}
    return subprocess.run([sys.executable, "-m", "lakeloop.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**env, "COLUMNS": "200"})


def stopped(pids: list[int]) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def vault_secret(state_dir: Path, services: dict, consumer: str, path: str) -> dict:
    """A KV secret, read with one consumer's AppRole (as that service reads it)."""
    from lakeloop.secrets import VaultClient
    from lakeloop.serving import vault_settings

    approle = state_dir / "vault" / f"{consumer}.approle.json"
    return VaultClient(vault_settings(services["vault"]["url"], approle_file=str(approle))).read(path)


def lakefs_client(state_dir: Path, services: dict):
    """A lakeFS client with the keys the pipeline's AppRole may read from Vault (as the flows get them)."""
    import lakefs

    keys = vault_secret(state_dir, services, "pipeline", LAKEFS_PATH)
    return lakefs.Client(host=services["lakefs"]["url"], username=keys["access_key_id"],
                         password=keys["secret_access_key"])


@pytest.fixture
def state_dir(tmp_path):
    yield tmp_path / "state"
    lakeloop("dev", "down", "--state-dir", str(tmp_path / "state"))


def test_up_status_ingest_down(state_dir, tmp_path):
    up = lakeloop("dev", "up", "--state-dir", str(state_dir), "--schedules")
    assert up.returncode == 0, up.stdout + up.stderr
    services = json.loads((state_dir / "stack.json").read_text())["services"]
    assert set(services) == SERVICES
    pids = [s["pid"] for s in services.values()]
    assert all(psutil.pid_exists(p) for p in pids)

    status = lakeloop("dev", "status", "--state-dir", str(state_dir))
    assert status.returncode == 0
    for service in services.values():
        assert service["url"] in status.stdout
    assert status.stdout.count("healthy") == len(SERVICES)
    env_file = (state_dir / "env").read_text()
    assert f"LAKELOOP_SERVING_URL={services['serving']['url']}" in env_file
    assert "secret_id" not in env_file and "role_id" not in env_file

    # deployed: every deployment of deployments.yaml, the hourly schedule (active: --schedules), the triggers
    api = services["prefect"]["url"] + "/api"
    names = {d["name"] for d in httpx.post(f"{api}/deployments/filter", json={}).json()}
    assert names == {"ingest-data", "train-model", "compress-model", "register-model", "deploy-model",
                     "rollback-model", "retrain", "monitor-drift"}
    drift = httpx.get(f"{api}/deployments/name/monitor-drift/monitor-drift").json()
    assert [s["schedule"]["cron"] for s in drift["schedules"]] == ["0 * * * *"] and drift["schedules"][0]["active"]
    automations = {a["name"] for a in httpx.post(f"{api}/automations/filter", json={}).json() if a["enabled"]}
    assert {"retrain on drift", "retrain on new data", "retrain on request"} <= automations
    # the webhook receiver wants its token; lakeFS holds the action that calls it
    hook = services["webhook"]["url"]
    assert httpx.post(f"{hook}/hooks/retrain", json={"reason": "x"}).status_code == 401
    import lakefs

    main = lakefs.Repository("lakeloop-data", client=lakefs_client(state_dir, services)).branch("main")
    with main.object("_lakefs_actions/lakeloop-retrain.yaml").reader("r") as reader:
        action = reader.read()
    assert f'url: "{hook}/hooks/lakefs"' in action and "{{ ENV.LAKEFSACTION_WEBHOOK_TOKEN }}" in action
    token = vault_secret(state_dir, services, "webhook", WEBHOOK_PATH)["token"]
    assert httpx.post(f"{hook}/hooks/retrain", json={}, headers={"Authorization": f"Bearer {token}"}
                      ).status_code == 400  # authenticated, but no reason given
    logs = "".join(p.read_text(errors="replace") for p in (state_dir / "logs").iterdir())
    assert token not in logs and "secret_id" not in logs

    again = lakeloop("dev", "up", "--state-dir", str(state_dir))  # idempotent: nothing new started
    assert "already running" in again.stderr
    assert [s["pid"] for s in json.loads((state_dir / "stack.json").read_text())["services"].values()] == pids

    batch = tmp_path / "b.parquet"
    assert lakeloop("data", "generate", str(batch), "--rows", "300").returncode == 0
    # a repository the retrain trigger does not watch, so no run starts on the worker
    ingest = lakeloop("data", "ingest", str(batch), "--repository", "scratch-repo", "--state-dir", str(state_dir))
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    assert "published 300 rows" in ingest.stdout
    bad = tmp_path / "bad.txt"
    bad.write_text("not a batch")
    refused = lakeloop("data", "ingest", str(bad), "--repository", "scratch-repo", "--state-dir", str(state_dir))
    assert refused.returncode == 1 and "error:" in refused.stderr and "Traceback" not in refused.stderr

    logged = (state_dir / "logs" / "vault.log").read_text()
    assert "Root Token:" not in logged and "Unseal Key:" not in logged and "==> OpenBao server" in logged

    down = lakeloop("dev", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0 and f"stopped {len(SERVICES)} service(s)" in down.stderr
    assert stopped(pids)
    assert lakeloop("dev", "status", "--state-dir", str(state_dir)).returncode == 1


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """`lakeloop demo --keep-up` once: the CLI's output, then the stack left running for the checks."""
    state = tmp_path_factory.mktemp("loop") / "state"
    demo = lakeloop("demo", "--state-dir", str(state), "--keep-up", timeout=900)
    (state.parent / "demo.out").write_text(demo.stdout + demo.stderr)  # to read when a check fails
    services = json.loads((state / "stack.json").read_text())["services"] if (state / "stack.json").exists() else {}
    yield demo, services, state
    lakeloop("dev", "down", "--state-dir", str(state))
    assert stopped([s["pid"] for s in services.values()])


@pytest.mark.timeout(900)
def test_make_run_closes_the_loop_through_the_triggers(loop):
    demo, services, state = loop
    assert demo.returncode == 0, demo.stdout[-6000:] + demo.stderr[-4000:]
    flat = " ".join(demo.stdout.split())
    assert "transactions-seed7.parquet: published" in flat and "transactions-seed8-broken.csv: quarantined" in flat
    assert "column 'merchant_note' failed no_pii_in_free_text in 1 row(s)" in flat
    assert "jane.doe@example.org" not in demo.stdout + demo.stderr
    for candidate in ("fp32", "int8-dynamic", "int8-static-qdq", "pruned", "distilled"):
        assert candidate in flat
    # normal traffic: no drift; drifted traffic: unconfirmed, then confirmed (hysteresis) and the event
    assert re.search(r"monitor-drift on \d+ rows of v1: no drift", flat)
    assert re.search(r"monitor-drift on \d+ rows of v1: drift \(unconfirmed\)", flat)
    assert "emitted lakeloop.drift.detected" in flat
    assert "v1 deployed" in flat and "v2 deployed" in flat and "v3 deployed" in flat
    assert "Prefect UI: " + services["prefect"]["url"] in flat

    # the demo deploys schedules paused: the hourly monitor-drift cannot fire into it at the top of an hour
    api = services["prefect"]["url"] + "/api"
    drift = httpx.get(f"{api}/deployments/name/monitor-drift/monitor-drift").json()
    assert [(s["schedule"]["cron"], s["active"]) for s in drift["schedules"]] == [("0 * * * *", False)]
    assert httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [drift["id"]]}}}).json() == []

    # the Prefect server agrees: three retrain runs, each created by an automation, all completed
    retrain = httpx.get(f"{api}/deployments/name/retrain/retrain").json()
    runs = httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [retrain["id"]]}},
                                                       "sort": "EXPECTED_START_TIME_ASC"}).json()
    assert [r["state"]["type"] for r in runs] == ["COMPLETED"] * 3
    assert [r["created_by"]["type"] for r in runs] == ["AUTOMATION"] * 3
    assert [r["created_by"]["display_value"] for r in runs] == ["retrain on new data", "retrain on drift",
                                                                "retrain on new data"]
    assert "(lakefs-webhook)" in runs[2]["parameters"]["reason"]  # the merge reached the receiver via the action
    assert runs[1]["parameters"]["reason"].startswith("drift of fraud v1")
    # the model server now serves v3
    models = lakeloop("models", "list", "--state-dir", str(state))
    assert models.returncode == 0, models.stderr
    assert re.search(r"v3 +│ production", models.stdout) and re.search(r"v2 +│ previous", models.stdout)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_prefect_ui_shows_deployments_schedule_and_drift_report(loop):
    from playwright.sync_api import expect, sync_playwright

    demo, services, _ = loop
    assert demo.returncode == 0
    base = services["prefect"]["url"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            context = browser.new_context(timezone_id="UTC")
            # only the local server: the UI's analytics and fonts hosts are never reached
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base)
                          else route.abort())
            page = context.new_page()
            page.goto(f"{base}/v2/deployments")
            for name in ("retrain", "monitor-drift", "ingest-data", "deploy-model", "rollback-model"):
                expect(page.get_by_role("link", name=name, exact=True).first).to_be_visible(timeout=30_000)
            expect(page.get_by_text("Every hour")).to_be_visible()  # the monitor-drift cron schedule

            page.goto(f"{base}/v2/artifacts")
            expect(page.get_by_text("drift-report").first).to_be_visible(timeout=30_000)
            page.get_by_text("drift-report").first.click()  # the key's page: one version per monitor-drift run
            expect(page.get_by_role("heading", name=re.compile(r"^fraud v\d+: "))).to_be_visible(timeout=30_000)
            expect(page.locator("a[href*='/v2/artifacts/artifact/']")).to_have_count(4)

            # the report of the window that confirmed the drift and started the retrain
            confirmed = [a for a in httpx.post(f"{base}/api/artifacts/filter", json={
                "artifacts": {"key": {"any_": ["drift-report"]}}}).json() if a["description"] == "fraud v1: drift"]
            assert len(confirmed) == 1
            page.goto(f"{base}/v2/artifacts/artifact/{confirmed[0]['id']}")
            expect(page.get_by_role("heading", name=re.compile("Drift of fraud v1: drift"))).to_be_visible(
                timeout=30_000)
            for feature in ("amount", "distance_from_home_km", "merchant_category", "output_probability"):
                expect(page.get_by_role("cell", name=feature, exact=True)).to_be_visible()
        finally:
            browser.close()
