"""`register-model` through `flow(...)` and `lakeloop models ...` through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from flows.compress import compress_model
from flows.register import register
from flows.train import train_model
from lakeloop.config import CompressionConfig, RegistryConfig, TrainingConfig
from tests._examples import FRAUD_DIR

pytestmark = pytest.mark.lakefs
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lakeloop.cli", "models", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_register_then_promote_lineage_rollback(tmp_path, publish, lakefs_server):
    data, published = publish(4_000, 29)
    name = data.repository
    run = train_model(project=FRAUD_DIR, data=data, training=TrainingConfig(epochs=1, work_root=str(tmp_path / "runs")))
    report = compress_model(run, compression=CompressionConfig(latency_repeat=10, candidates=["int8-dynamic"]))
    registry = RegistryConfig(repository=f"{name}-models",
                              storage_namespace=f"{lakefs_server.namespace_prefix}/{name}-models")
    v1 = register(run.workdir, report, registry)
    v2 = register(run.workdir, report, registry)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.manifest["lineage"]["data_commit"] == published.commit_id
    assert v1.manifest["variant"] == report.chosen and "model.onnx" in v1.manifest["files"]

    repo = ["--name", "fraud", "--registry", registry.repository]
    assert cli("promote", "1", "--reason", "first", *repo).returncode == 0
    promoted = cli("promote", "2", "--reason", "better", *repo)
    assert promoted.returncode == 0 and "fraud@production → v2" in promoted.stdout
    listed = cli("list", *repo)
    assert listed.returncode == 0 and "production" in listed.stdout and "previous" in listed.stdout
    lineage = cli("lineage", *repo)
    assert lineage.returncode == 0, lineage.stderr
    assert published.commit_id in lineage.stdout and "signature verified" in lineage.stdout
    assert "moved to v2 by cli:" in lineage.stdout and "moved to v1 by cli:" in lineage.stdout
    back = cli("rollback", *repo)
    assert back.returncode == 0 and "→ v1 (rolled back)" in back.stdout
    for done in (promoted, listed, lineage, back):  # a clean terminal: no Prefect worker warnings at exit
        assert "Warning" not in done.stderr and "EventsWorker" not in done.stderr, done.stderr
    missing = cli("promote", "9", *repo)
    assert missing.returncode == 1 and "has no version 9" in missing.stderr and "Traceback" not in missing.stderr
