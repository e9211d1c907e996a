"""`lakeloop dev up | status | down` and `lakeloop demo` (what `make run` runs), through the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def lakeloop(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "LAKEFS_"))}
    return subprocess.run([sys.executable, "-m", "lakeloop.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**env, "COLUMNS": "200"})


@pytest.fixture
def state_dir(tmp_path):
    yield tmp_path / "state"
    lakeloop("dev", "down", "--state-dir", str(tmp_path / "state"))


def test_up_status_ingest_down(state_dir, tmp_path):
    up = lakeloop("dev", "up", "--state-dir", str(state_dir))
    assert up.returncode == 0, up.stdout + up.stderr
    services = json.loads((state_dir / "stack.json").read_text())["services"]
    assert set(services) == {"prefect", "lakefs", "vault", "serving"}
    pids = [s["pid"] for s in services.values()]
    assert all(psutil.pid_exists(p) for p in pids)

    status = lakeloop("dev", "status", "--state-dir", str(state_dir))
    assert status.returncode == 0
    for service in services.values():
        assert service["url"] in status.stdout
    assert status.stdout.count("healthy") == 4
    env_file = (state_dir / "env").read_text()
    assert f"LAKELOOP_SERVING_URL={services['serving']['url']}" in env_file
    assert "secret_id" not in env_file and "role_id" not in env_file

    again = lakeloop("dev", "up", "--state-dir", str(state_dir))  # idempotent: nothing new started
    assert "already running" in again.stderr
    assert [s["pid"] for s in json.loads((state_dir / "stack.json").read_text())["services"].values()] == pids

    batch = tmp_path / "b.parquet"
    assert lakeloop("data", "generate", str(batch), "--rows", "300").returncode == 0
    ingest = lakeloop("data", "ingest", str(batch), "--state-dir", str(state_dir))
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    assert "published 300 rows" in ingest.stdout
    second = lakeloop("data", "ingest", str(batch), "--repository", "second-repo", "--state-dir", str(state_dir))
    assert second.returncode == 0, second.stderr  # each repository gets its own storage namespace
    bad = tmp_path / "bad.txt"
    bad.write_text("not a batch")
    refused = lakeloop("data", "ingest", str(bad), "--state-dir", str(state_dir))
    assert refused.returncode == 1 and "error:" in refused.stderr and "Traceback" not in refused.stderr

    logged = (state_dir / "logs" / "vault.log").read_text()
    assert "Root Token:" not in logged and "Unseal Key:" not in logged and "==> OpenBao server" in logged

    down = lakeloop("dev", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0 and "stopped 4 service(s)" in down.stderr
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert lakeloop("dev", "status", "--state-dir", str(state_dir)).returncode == 1


def test_demo_runs_the_loop_and_stops_what_it_started(state_dir):
    demo = lakeloop("demo", "--state-dir", str(state_dir), "--rows", "2000", timeout=600)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "published" in demo.stdout and "quarantined" in demo.stdout
    flat = " ".join(demo.stdout.split())
    assert "lakeloop-data/quarantine-" in flat.replace(" ", "")
    assert "column 'merchant_note' failed no_pii_in_free_text in 1 row(s)" in flat
    assert "column 'customer_age' failed greater_than_or_equal_to(18) in 3 row(s)" in flat
    assert "jane.doe@example.org" not in demo.stdout + demo.stderr
    assert "2. train-model on lakeloop-data@" in flat and "test PR AUC" in flat
    assert "3. compress-model" in flat and "chosen:" in flat
    assert "4. register-model: fraud v1" in flat
    assert "5. deploy-model: v1 deployed" in flat and "smoke test through the V2 endpoint on 256 rows passed" in flat
    assert "6. serving: fraud v1" in flat
    assert re.search(r"│ 64 +│ 100 +│", demo.stdout)  # 100 requests of 64 rows answered
    for candidate in ("fp32", "int8-dynamic", "int8-static-qdq", "pruned", "distilled"):
        assert candidate in flat
    assert not (state_dir / "stack.json").exists()
