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

from lakeloop.secrets import LAKEFS_PATH, SERVING_PATH, WEBHOOK_PATH

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"prefect", "lakefs", "vault", "serving", "webhook", "worker"}


def lakeloop(*args: str, timeout: int = 300, installed: Path | None = None, cwd: Path = ROOT
             ) -> subprocess.CompletedProcess:
    """The CLI from this checkout, or (`installed`: a folder the wheel was installed into) as a pip install
    runs it, from `cwd` outside any checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LAKEFS_", "LAKELOOP_"))}
    if installed is not None:
        env["PYTHONPATH"] = str(installed)
    return subprocess.run([sys.executable, "-m", "lakeloop.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**env, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """lakeloop's wheel, built from this checkout and installed (without dependencies: this venv has them)
    into a folder of its own, as `pip install lakeloop` would put it into site-packages."""
    wheels, target = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("site-packages")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    (wheel,) = wheels.glob("lakeloop-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    return target


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


def test_the_wheel_installs_lakeloop_alone_and_carries_what_dev_up_deploys(installed):
    assert sorted(p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "lakeloop"]
    assert [p.name for p in (installed / "bin").iterdir()] == ["lakeloop"]  # the console script
    bundle = installed / "lakeloop" / "_bundle"
    for folder in ("flows", "tasks", "blocks"):  # copies, not links: a wheel has no links
        files = sorted(p.relative_to(ROOT) for p in (ROOT / folder).glob("*.py"))
        assert files and all((bundle / f).read_bytes() == (ROOT / f).read_bytes() for f in files)
        assert not (bundle / folder).is_symlink()
    assert (bundle / "deployments.yaml").read_text() == (ROOT / "deployments.yaml").read_text()
    assert (bundle / "examples" / "fraud" / "lakeloop.yaml").is_file()
    compiled = sorted(p.name.split(".")[0] for p in (installed / "lakeloop" / "serving").glob("*.so"))
    assert compiled == ["_front", "_tensors"]  # the model server's compiled parts: HTTP front, V2 parser
    where = subprocess.run([sys.executable, "-c", "import importlib.util, lakeloop; print(lakeloop.__file__); "
                            "print(importlib.util.find_spec('flows'))"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(installed)}, cwd=installed.parent, check=True)
    assert where.stdout.split() == [str(installed / "lakeloop" / "__init__.py"), "None"]  # no top-level `flows`


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_up_status_projects_ingest_down(state_dir, tmp_path, installed):
    """The whole path a team takes with `pip install lakeloop` in its own repository: no checkout."""
    user = tmp_path / "repo"
    user.mkdir()

    def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return lakeloop(*args, timeout=timeout, installed=installed, cwd=user)

    up = cli("dev", "up", "--state-dir", str(state_dir), "--schedules")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"runs flows from {installed / 'lakeloop' / '_bundle'}" in up.stderr
    services = json.loads((state_dir / "stack.json").read_text())["services"]
    assert set(services) == SERVICES
    pids = [s["pid"] for s in services.values()]
    assert all(psutil.pid_exists(p) for p in pids)

    status = cli("dev", "status", "--state-dir", str(state_dir))
    assert status.returncode == 0
    for service in services.values():
        assert service["url"] in status.stdout
    assert status.stdout.count("healthy") == len(SERVICES)
    env_file = (state_dir / "env").read_text()
    assert f"LAKELOOP_SERVING_URL={services['serving']['url']}" in env_file
    assert "secret_id" not in env_file and "role_id" not in env_file

    # projects join the running stack: each gets every deployment of deployments.yaml under its own name,
    # with its own triggers (and schedule, active with --schedules), and a lakeFS action naming it
    api = services["prefect"]["url"] + "/api"
    assert httpx.post(f"{api}/deployments/filter", json={}).json() == []  # `dev up` alone deploys nothing
    added = cli("project", "add", "examples/fraud", "--schedules", "--state-dir", str(state_dir))
    assert added.returncode == 0, added.stdout + added.stderr
    shutil.copytree(ROOT / "examples" / "demand", user / "demand")  # a project in the team's own repository
    added = cli("project", "add", "demand", "--state-dir", str(state_dir))
    assert added.returncode == 0, added.stdout + added.stderr
    deployments = httpx.post(f"{api}/deployments/filter", json={}).json()
    assert sorted(d["name"] for d in deployments) == ["demand"] * 8 + ["fraud"] * 8
    drift = httpx.get(f"{api}/deployments/name/monitor-drift/fraud").json()
    assert [s["schedule"]["cron"] for s in drift["schedules"]] == ["0 * * * *"] and drift["schedules"][0]["active"]
    demand = httpx.get(f"{api}/deployments/name/monitor-drift/demand").json()
    assert not demand["schedules"][0]["active"]  # paused unless asked for
    assert demand["parameters"]["project"] == str(user / "demand")
    automations = {a["name"]: a for a in httpx.post(f"{api}/automations/filter", json={}).json() if a["enabled"]}
    for project in ("fraud", "demand"):
        for why in ("drift", "new data", "request"):
            assert automations[f"retrain {project} on {why}"]["trigger"]["match"] == {"lakeloop.project": project}
    listed = cli("project", "list", "--state-dir", str(state_dir))
    assert listed.returncode == 0 and "retrain/demand" in listed.stdout and "retrain/fraud" in listed.stdout
    # one data repository per project: a second project on fraud's repository would retrain both on a merge
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "lakeloop.yaml").write_text((ROOT / "examples" / "fraud" / "lakeloop.yaml").read_text().replace(
        "name: fraud", "name: clash"))
    refused = cli("project", "add", str(clash), "--state-dir", str(state_dir))
    assert refused.returncode == 1 and "data.repository 'lakeloop-data' is already project 'fraud'" in refused.stderr
    # the webhook receiver wants its token; lakeFS holds each project's action that calls it
    hook = services["webhook"]["url"]
    assert httpx.post(f"{hook}/hooks/retrain", json={"reason": "x", "project": "fraud"}).status_code == 401
    import lakefs

    main = lakefs.Repository("lakeloop-data", client=lakefs_client(state_dir, services)).branch("main")
    with main.object("_lakefs_actions/lakeloop-fraud.yaml").reader("r") as reader:
        action = reader.read()
    assert f'url: "{hook}/hooks/lakefs"' in action and "project: fraud" in action
    assert "{{ ENV.LAKEFSACTION_WEBHOOK_TOKEN }}" in action
    token = vault_secret(state_dir, services, "webhook", WEBHOOK_PATH)["token"]
    assert httpx.post(f"{hook}/hooks/retrain", json={"project": "fraud"}, headers={"Authorization": f"Bearer {token}"}
                      ).status_code == 400  # authenticated, but no reason given
    logs = "".join(p.read_text(errors="replace") for p in (state_dir / "logs").iterdir())
    assert token not in logs and "secret_id" not in logs

    again = cli("dev", "up", "--state-dir", str(state_dir))  # idempotent: nothing new started
    assert "already running" in again.stderr
    assert [s["pid"] for s in json.loads((state_dir / "stack.json").read_text())["services"].values()] == pids

    batch = tmp_path / "b.parquet"
    made = cli("data", "generate", str(batch), "--project", "examples/fraud", "--rows", "300")
    assert made.returncode == 0 and "wrote 300 rows of fraud" in made.stdout
    # a project the stack does not run (not added: no deployments, no triggers), so no run starts on the worker
    scratch = tmp_path / "scratch"
    shutil.copytree(ROOT / "examples" / "fraud", scratch)
    (scratch / "lakeloop.yaml").write_text((scratch / "lakeloop.yaml").read_text().replace(
        "name: fraud", "name: scratch").replace("repository: lakeloop-data", "repository: scratch-repo"))
    ingest = cli("data", "ingest", str(batch), "--project", str(scratch), "--state-dir", str(state_dir))
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    assert "published 300 rows" in ingest.stdout and "scratch-repo/main" in ingest.stdout
    bad = tmp_path / "bad.txt"
    bad.write_text("not a batch")
    refused = cli("data", "ingest", str(bad), "--project", str(scratch), "--state-dir", str(state_dir))
    assert refused.returncode == 1 and "error:" in refused.stderr and "Traceback" not in refused.stderr
    for project in ("fraud", "demand"):  # nothing triggered by scratch's merge (monitor-drift/fraud is scheduled)
        assert wait_for_runs(api, f"retrain/{project}", 0, timeout=1) == []

    guide_steps(state_dir, services, tmp_path / "guide", installed)
    bring_your_own(state_dir, services, tmp_path, cli)

    logged = (state_dir / "logs" / "vault.log").read_text()
    assert "Root Token:" not in logged and "Unseal Key:" not in logged and "==> OpenBao server" in logged

    down = cli("dev", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0 and f"stopped {len(SERVICES)} service(s)" in down.stderr
    assert stopped(pids)
    assert cli("dev", "status", "--state-dir", str(state_dir)).returncode == 1


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


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_run_closes_the_loop_through_the_triggers(loop):
    demo, services, state = loop
    assert demo.returncode == 0, demo.stdout[-6000:] + demo.stderr[-4000:]
    flat = " ".join(demo.stdout.split())
    assert "fraud-seed7.parquet: published" in flat and "fraud-seed8-broken.csv: quarantined" in flat
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
    drift = httpx.get(f"{api}/deployments/name/monitor-drift/fraud").json()
    assert [(s["schedule"]["cron"], s["active"]) for s in drift["schedules"]] == [("0 * * * *", False)]
    assert httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [drift["id"]]}}}).json() == []

    # the Prefect server agrees: three retrain runs, each created by an automation, all completed
    retrain = httpx.get(f"{api}/deployments/name/retrain/fraud").json()
    runs = httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [retrain["id"]]}},
                                                       "sort": "EXPECTED_START_TIME_ASC"}).json()
    assert [r["state"]["type"] for r in runs] == ["COMPLETED"] * 3
    assert [r["created_by"]["type"] for r in runs] == ["AUTOMATION"] * 3
    assert [r["created_by"]["display_value"] for r in runs] == ["retrain fraud on new data", "retrain fraud on drift",
                                                                "retrain fraud on new data"]
    assert "(lakefs-webhook)" in runs[2]["parameters"]["reason"]  # the merge reached the receiver via the action
    assert runs[1]["parameters"]["reason"].startswith("drift of fraud v1")
    # the model server now serves v3
    models = lakeloop("models", "list", "--name", "fraud", "--state-dir", str(state))
    assert models.returncode == 0, models.stderr
    assert re.search(r"v3 +│ production", models.stdout) and re.search(r"v2 +│ previous", models.stdout)


@pytest.mark.slow
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
            for name in ("retrain", "monitor-drift", "ingest-data", "deploy-model", "rollback-model", "fraud"):
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


# -- bring your own data, for each task, on one running stack ------------------------------------------

BYO = (("cancer", "load_breast_cancer", "binary"), ("wine", "load_wine", "multiclass"),
       ("diabetes", "load_diabetes", "regression"))


def byo_frame(loader: str, task: str, seed: int = 0):
    """A scikit-learn dataset as a team's table: an id, a text label for classes, a few blanks."""
    import numpy as np
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, loader)(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: c.replace(" ", "_").replace("(", "").replace(")", ""))
    if task == "multiclass":
        frame["target"] = np.asarray(["barolo", "grignolino", "barbera"], dtype=object)[frame["target"]]
    rng = np.random.default_rng(seed)
    first = frame.columns[0]
    frame.loc[rng.random(len(frame)) < 0.05, first] = np.nan  # missing values the model must take
    frame.insert(0, "row_id", [f"r{i:05d}" for i in range(len(frame))])
    return frame


def triton_batch(frame, metadata: dict, binary: bool = True) -> list:
    import numpy as np
    import tritonclient.http as triton

    inputs = []
    for spec in metadata["inputs"]:
        values = frame[spec["name"]].to_numpy()
        array = (values.astype(str).astype(object) if spec["datatype"] == "BYTES" else
                 values.astype(np.float32)).reshape(-1, 1)
        tensor = triton.InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def wait_for_runs(api: str, deployment: str, count: int, timeout: float = 600) -> list[dict]:
    import time

    found = httpx.get(f"{api}/deployments/name/{deployment}").json()
    deadline = time.monotonic() + timeout
    while True:
        runs = httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [found["id"]]}},
                                                           "sort": "EXPECTED_START_TIME_ASC"}).json()
        if len(runs) >= count and all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
                                      for r in runs):
            return runs
        assert time.monotonic() < deadline, f"{deployment}: {[(r['name'], r['state']['type']) for r in runs]}"
        time.sleep(1)


GUIDE = ["data.md", "training.md", "compression.md", "registry.md", "deploying.md", "drift.md"]


def guide_steps(state_dir: Path, services: dict, folder: Path, installed: Path) -> None:
    """The guide's Python steps (docs/, in page order) as one session, with the shell steps before them, on
    this stack — fresh but for the projects added — and the installed lakeloop (add_to_path first, as
    docs/install.md says): each step works on what the one before it left."""
    folder.mkdir()
    blocks = [b for page in GUIDE for b in re.findall(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(), re.S)
              if "from flows." in b]
    assert len(blocks) == len(GUIDE)
    (folder / "steps.py").write_text("from lakeloop.shipped import add_to_path\n\nadd_to_path()\n" + "\n".join(blocks))
    made = lakeloop("data", "generate", "batch.parquet", "--project", "examples/fraud", "--rows", "5000",
                    installed=installed, cwd=folder)
    assert made.returncode == 0, made.stderr
    exported = dict(line.removeprefix("export ").split("=", 1) for line in (state_dir / "env").read_text().splitlines()
                    if line.startswith("export "))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LAKEFS_", "LAKELOOP_"))}
    steps = subprocess.run([sys.executable, "steps.py"], cwd=folder, capture_output=True, text=True, timeout=900,
                           env={**env, **exported, "PYTHONPATH": str(installed)})
    assert steps.returncode == 0, steps.stdout[-3000:] + steps.stderr[-5000:]
    printed = steps.stdout.split("\n")
    assert printed[0].startswith("5000 ")  # rows published, the commit, the rows pulled back
    assert any(line.startswith("deployed ") for line in printed), steps.stdout  # the pinned version went live
    api = services["prefect"]["url"] + "/api"
    runs = wait_for_runs(api, "retrain/fraud", 1)  # the ingest step's merge started exactly one retrain
    assert [(r["state"]["type"], r["created_by"]["display_value"]) for r in runs] == [
        ("COMPLETED", "retrain fraud on new data")]


def bring_your_own(state_dir: Path, services: dict, tmp_path: Path, lakeloop=lakeloop) -> None:
    """init → validate → project add → ingest → triggered retrain → served (tritonclient, binary tensors,
    NaN) → traffic → monitor-drift's report, for a binary, a multiclass and a regression project at once."""
    import numpy as np
    import tritonclient.http as triton
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = services["prefect"]["url"] + "/api"
    frames = {}
    for name, loader, task in BYO:
        frame = frames[name] = byo_frame(loader, task)
        source = tmp_path / f"{name}.csv"
        frame.to_csv(source, index=False)
        folder = tmp_path / name
        made = lakeloop("init", str(folder), "--from-data", str(source), "--label", "target", "--id", "row_id")
        assert made.returncode == 0, made.stdout + made.stderr
        assert f"task: {task}" in (folder / "lakeloop.yaml").read_text()  # the rules pinned the task
        with open(folder / "lakeloop.yaml", "a") as f:  # quicker than the defaults; the file is the user's
            f.write("compression:\n  candidates: [int8-dynamic]\n  latency_repeat: 20\n")
        (folder / "lakeloop.yaml").write_text((folder / "lakeloop.yaml").read_text().replace(
            "epochs: 20", "epochs: 8"))
        checked = lakeloop("validate", str(folder), "--data", str(source))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        added = lakeloop("project", "add", str(folder), "--state-dir", str(state_dir))
        assert added.returncode == 0, added.stdout + added.stderr
    for name, _, _ in BYO:  # all three published before any retrain ends: their triggers must not cross
        ingest = lakeloop("data", "ingest", str(tmp_path / f"{name}.csv"), "--project", str(tmp_path / name),
                          "--state-dir", str(state_dir))
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    for name, _, _ in BYO:
        runs = wait_for_runs(api, f"retrain/{name}", 1)
        assert [(r["state"]["type"], r["created_by"]["display_value"]) for r in runs] == [
            ("COMPLETED", f"retrain {name} on new data")], runs

    key = vault_secret(state_dir, services, "serving", SERVING_PATH)["api_keys"].split(",")[0]
    headers = {"Authorization": f"Bearer {key}"}
    index = httpx.post(f"{services['serving']['url']}/v2/repository/index", headers=headers).json()
    assert {(m["name"], m["state"]) for m in index} >= {(n, "READY") for n, _, _ in BYO}
    client = triton.InferenceServerClient(services["serving"]["url"].removeprefix("http://"))
    for name, _, task in BYO:
        metadata = client.get_model_metadata(name, headers=headers)
        assert metadata["parameters"]["task"] == task
        rows = frames[name].head(50).copy()
        rows.iloc[:5, 1] = np.nan  # NaN in binary tensors is a valid input
        result = client.infer(name, triton_batch(rows, metadata), headers=headers)
        if task == "binary":
            probability = result.as_numpy("probability")
            assert probability.shape == (50, 1) and np.all((probability >= 0) & (probability <= 1))
        elif task == "multiclass":
            probabilities = result.as_numpy("probabilities")
            assert probabilities.shape == (50, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
            assert sorted(metadata["parameters"]["classes"]) == ["barbera", "barolo", "grignolino"]
        else:
            assert result.as_numpy("prediction").shape == (50, 1)
            assert np.isfinite(result.as_numpy("prediction")).all()
        for start in range(0, 400, 40):  # traffic, logged for monitor-drift (its minimum is 100 rows)
            client.infer(name, triton_batch(frames[name].iloc[start % len(frames[name]):][:40], metadata),
                         headers=headers)
    import time

    time.sleep(5)  # the server writes its inference logs every 2 s
    with temporary_settings(updates={PREFECT_API_URL: api}):
        for name, _, _ in BYO:
            run = run_deployment(f"monitor-drift/{name}", parameters={"drift": {"window_hours": 1}}, timeout=300)
            assert run.state.is_completed(), run.state
    reports = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["drift-report"]}}}).json()
    described = {a["description"].split(" v")[0] for a in reports}
    assert {n for n, _, _ in BYO} <= described, described
    # demand: added, never fed; fraud: fed once, by the guide's steps: their triggers saw the others' events
    # and did nothing more
    assert wait_for_runs(api, "retrain/demand", 0, timeout=1) == []
    assert [r["created_by"]["display_value"] for r in wait_for_runs(api, "retrain/fraud", 1, timeout=1)] == [
        "retrain fraud on new data"]
