"""`monitor-drift` on traffic logged by the model server's own writer into lakeFS: no drift on normal
traffic, drift on shifted traffic only once confirmed, then a cooldown; the event, the committed report."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import lakefs
import onnxruntime as ort
import pytest

from flows.drift import monitor_drift
from lakeloop.config import DriftConfig
from lakeloop.data._wap import read_dataset
from lakeloop.deploy import raw_columns, raw_inputs
from lakeloop.drift import DriftThresholds
from lakeloop.modeling.features import FeatureSpec
from lakeloop.project import resolve_project
from lakeloop.serving import InferenceLogger, LakeFSSink
from tests._events import prefect_events
from tests._examples import FRAUD_DIR, DriftKnobs, generate_transactions
from tests.flows.test_deploy import trained_model

pytestmark = pytest.mark.lakefs


def serve_rows(frame, model: Path, sink: LakeFSSink, version: str) -> None:
    """What the model server does for each request, in batches of 50 rows: score, then log."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logger = InferenceLogger(sink, interval=3600)
    for start in range(0, len(frame), 50):
        rows = frame.iloc[start:start + 50]
        probability, label = session.run(["probability", "label"], raw_inputs(session, rows))
        logger.record("fraud", version, len(probability), raw_columns(session, rows),
                      {"probability": probability, "label": label})
    logger.flush()


def test_monitor_drift_confirms_reports_and_cools_down(tmp_path, publish, registry_for, lakefs_server):
    data, published = publish(4_000, 41)
    frame = read_dataset(lakefs_server.client(), data.repository, published.commit_id, data.prefix)
    registry, reg = registry_for(data)
    name = registry.repository
    config = DriftConfig(window_hours=1, min_rows=100, confirm_windows=2, cooldown_hours=1,
                         work_root=str(tmp_path / "drift"), thresholds=DriftThresholds(key_features=["amount"]))

    assert monitor_drift(project=FRAUD_DIR, data=data, registry=registry, drift=config).status == "no model"

    model = trained_model(frame, tmp_path / "model.onnx")
    (tmp_path / "features.json").write_text(FeatureSpec.fit(resolve_project("fraud"), frame).to_json())
    reg.register("fraud", {"model.onnx": model, "torch/features.json": tmp_path / "features.json"},
                 {"lineage": {"data_repository": data.repository, "data_commit": published.commit_id}}, actor="test")
    reg.promote("fraud", 1, "production", actor="test")
    sink = LakeFSSink(lakefs_server.client(), data.repository,
                      storage_namespace=f"{lakefs_server.namespace_prefix}/{data.repository}")

    serve_rows(generate_transactions(1_500, seed=42), model, sink, "1")
    normal_end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    calm = monitor_drift(project=FRAUD_DIR, data=data, registry=registry, drift=config, window_end=normal_end)
    assert calm.status == "no drift" and calm.rows == 1_500 and calm.drifted == []
    assert set(calm.scores) >= {"amount", "country", "output_probability"}

    time.sleep(1.5)
    shifted = generate_transactions(1_500, seed=43, drift=DriftKnobs(amount_shift=1.0, new_categories=("casino",),
                                                                      new_category_share=0.3))
    serve_rows(shifted, model, sink, "1")
    end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

    def after_normal(seconds: int):  # consecutive windows that all start where the normal traffic ended
        window_end = end + dt.timedelta(seconds=seconds)
        hours = (window_end - normal_end).total_seconds() / 3600
        return monitor_drift(project=FRAUD_DIR, data=data, registry=registry,
                             drift=config.model_copy(update={"window_hours": hours}), window_end=window_end)

    first = after_normal(0)
    assert first.status == "drift (unconfirmed)" and not first.event_emitted and first.rows == 1_500
    assert {"amount", "merchant_category"} <= set(first.drifted)
    second = after_normal(1)
    assert second.status == "drift" and second.event_emitted
    third = after_normal(2)
    assert third.status == "drift (cooldown)" and not third.event_emitted

    detected = prefect_events("lakeloop.drift.detected", f"lakeloop.model.{name}.fraud")
    assert len(detected) == 1
    payload = detected[0]["payload"]
    assert payload["version"] == 1 and payload["reference_commit"] == published.commit_id
    assert "amount" in payload["drifted"] and payload["report_commit"] == second.report_commit

    branch = lakefs.Repository(data.repository, client=lakefs_server.client()).branch("inference-logs")
    stored = [o.path for o in branch.objects(prefix="drift/fraud/")]
    assert sum(p.endswith(".json") for p in stored) == 4 and any(p.endswith("-amount.png") for p in stored)
    assert (tmp_path / "drift" / name / "fraud" / "v1" / "reference.json").exists()  # cached for the next window


def test_labelled_rows_published_since_the_model_count_as_drift_when_it_does_worse(tmp_path, publish, registry_for,
                                                                                  lakefs_server):
    from flows.ingest import ingest_data
    from lakeloop.deploy import score, test_rows
    from lakeloop.modeling.metrics import classification_metrics

    data, published = publish(4_000, 51)
    frame = read_dataset(lakefs_server.client(), data.repository, published.commit_id, data.prefix)
    registry, reg = registry_for(data)
    model = trained_model(frame, tmp_path / "model.onnx")
    (tmp_path / "features.json").write_text(FeatureSpec.fit(resolve_project("fraud"), frame).to_json())
    test = test_rows(frame, "transaction_id")
    at_training = classification_metrics(test["is_fraud"].to_numpy(), score(model, test))["pr_auc"]
    reg.register("fraud", {"model.onnx": model, "torch/features.json": tmp_path / "features.json"},
                 {"lineage": {"data_repository": data.repository, "data_commit": published.commit_id},
                  "compression": {"config": {"primary_metric": "pr_auc"}, "chosen": "fp32",
                                  "table": [{"name": "fp32", "primary_metric": at_training}]}}, actor="test")
    reg.promote("fraud", 1, "production", actor="test")
    config = DriftConfig(window_hours=1, confirm_windows=1, cooldown_hours=0, work_root=str(tmp_path / "drift"))

    quiet = monitor_drift(project=FRAUD_DIR, data=data, registry=registry, drift=config)
    assert quiet.status == "no data" and quiet.performance is None  # nothing labelled since the model's commit

    # a newly labelled batch whose labels no longer follow the features the model learnt from
    moved = generate_transactions(3_000, seed=52)
    moved["is_fraud"] = moved["is_fraud"].sample(frac=1.0, random_state=0).to_numpy()
    moved.to_parquet(tmp_path / "moved.parquet")
    head = ingest_data(str(tmp_path / "moved.parquet"), project=FRAUD_DIR, data=data).commit_id

    outcome = monitor_drift(project=FRAUD_DIR, data=data, registry=registry, drift=config)
    perf = outcome.performance
    assert perf is not None and perf.rows == 3_000 and perf.since_commit == published.commit_id
    assert perf.head_commit == head and perf.at_training == pytest.approx(at_training)
    assert perf.degraded and perf.drop > config.performance_drop and perf.current < at_training
    assert outcome.status == "drift" and outcome.event_emitted and "labelled rows" in outcome.reason
    detected = prefect_events("lakeloop.drift.detected", f"lakeloop.model.{registry.repository}.fraud")
    assert len(detected) == 1 and "performance" in detected[0]["payload"]["drifted"]
