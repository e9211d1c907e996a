"""`train-model` through `flow(...)`: pinned commit in, metrics artifact and lineage out."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prefect.settings import PREFECT_API_URL

from flows.train import train_model
from lakeloop.config import DataConfig, TrainingConfig
from tests._examples import FRAUD_DIR

pytestmark = pytest.mark.lakefs


def test_train_model_on_the_published_commit(tmp_path, publish):
    data, published = publish(6_000, 17)
    name = data.repository
    training = TrainingConfig(epochs=2, work_root=str(tmp_path / "runs"))

    result = train_model(project=FRAUD_DIR, data=data, training=training)
    assert result.data_commit == published.commit_id
    assert set(result.test_metrics) >= {"accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"}
    assert [h["epoch"] for h in result.history] == [0, 1]
    lineage = json.loads((Path(result.workdir) / "lineage.json").read_text())
    assert lineage["data_commit"] == published.commit_id and lineage["data_repository"] == name
    assert lineage["config"]["epochs"] == 2 and sum(lineage["rows"].values()) == 6_000
    assert lineage["metrics"] == result.test_metrics and len(lineage["history"]) == 2

    artifacts = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter",
                           json={"artifacts": {"key": {"any_": ["train-model-metrics"]}}}).json()
    assert any(published.commit_id[:12] in a["data"] for a in artifacts)

    # the same commit: resumes, same metrics
    again = train_model(project=FRAUD_DIR, data=data, training=training, ref=published.commit_id)
    assert again.test_metrics == result.test_metrics and again.resumed


def test_compress_model_after_training(tmp_path, publish):
    from flows.compress import compress_model
    from lakeloop.config import CompressionConfig

    data, _ = publish(8_000, 23)
    run = train_model(project=FRAUD_DIR, data=data, training=TrainingConfig(epochs=2, work_root=str(tmp_path / "runs")))
    report = compress_model(run, data=DataConfig(),  # the repository comes from the run itself
                            compression=CompressionConfig(latency_repeat=20, candidates=["int8-dynamic", "pruned"]))
    assert [r["name"] for r in report.table] == ["fp32", "int8-dynamic", "pruned"]
    assert report.chosen in {"fp32", "int8-dynamic", "pruned"}
    assert Path(report.chosen_path).exists()
    lineage = json.loads((Path(run.workdir) / "lineage.json").read_text())
    assert lineage["compression"]["chosen"] == report.chosen and lineage["metrics"] == run.test_metrics
    artifacts = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter",
                           json={"artifacts": {"key": {"any_": ["compress-model-candidates"]}}}).json()
    assert any(f"Chosen: **{report.chosen}**" in a["data"] and Path(run.workdir).name in a["description"]
               for a in artifacts)
