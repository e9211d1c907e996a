"""Drift tasks: the production model's reference (cached per version), a window of its traffic, the
comparison, and the decision recorded in lakeFS, as Prefect artifacts and, on drift, as an event."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel

from blocks import LakeFSConnection
from lakeloop import deploy as d
from lakeloop.compression import feature_columns
from lakeloop.config import DataConfig, DriftConfig, RegistryConfig
from lakeloop.data import _wap as wap
from lakeloop.drift import DriftReport, Reference
from lakeloop.drift import _window as logs
from lakeloop.drift._decide import decide
from lakeloop.drift._plots import plot_features
from lakeloop.events import DRIFT_DETECTED, model_resource
from lakeloop.modeling.features import FeatureSpec, split_of
from lakeloop.project import Project


class Performance(BaseModel):
    """The production model on labelled rows published after its data commit (rows it never saw)."""

    rows: int
    since_commit: str
    head_commit: str
    metric: str
    current: float
    at_training: float  # the deployed variant's score on its own test split
    drop: float
    degraded: bool


class DriftOutcome(BaseModel):
    model: str
    version: int | None
    status: str  # drift, drift (unconfirmed), drift (cooldown), no drift, no data, no model
    reason: str
    window_start: str
    window_end: str
    rows: int = 0
    drifted: list[str] = []
    scores: dict[str, float] = {}
    event_emitted: bool = False
    report_commit: str | None = None
    performance: Performance | None = None




def score_feature(task: str) -> str:
    """The inference-log column of the model's answer that drift compares like a feature: the positive-class
    probability, the prediction, or (multiclass) the predicted class."""
    return {"binary": "output_probability", "multiclass": "output_label", "regression": "output_prediction"}[task]


@task(cache_policy=NO_CACHE)
def production_model(registry: RegistryConfig) -> tuple[int | None, dict]:
    """The version the production alias points at, and its verified manifest (or None, {})."""
    reg = LakeFSConnection.load(registry.lakefs_block).registry(registry.repository, registry.storage_namespace)
    version = reg.alias(registry.model_name, "production")
    return (version, reg.manifest(registry.model_name, version)) if version is not None else (None, {})


def _version_folder(registry: RegistryConfig, drift: DriftConfig, version: int) -> Path:
    """Where a model version's reference (and its verified model file) is cached."""
    return Path(drift.work_root) / registry.repository / registry.model_name / f"v{version}"


@task(cache_policy=NO_CACHE)
def drift_reference(registry: RegistryConfig, data: DataConfig, drift: DriftConfig, version: int,
                    manifest: dict, project: Project) -> Reference:
    """The reference of `version`: built once from its training rows, cached on disk, loaded once per run."""
    folder = _version_folder(registry, drift, version)
    if (folder / "reference.json").exists():
        return Reference.load(folder)
    connection = LakeFSConnection.load(registry.lakefs_block)
    reg = connection.registry(registry.repository, registry.storage_namespace)
    model_dir = folder / "model"
    reg.fetch(registry.model_name, version, model_dir, only=["model.onnx", "torch/features.json"])
    spec = FeatureSpec.from_json((model_dir / "torch" / "features.json").read_text())
    lineage = manifest.get("lineage", {})
    frame = wap.read_dataset(connection.client(), lineage.get("data_repository", data.repository),
                             lineage["data_commit"], lineage.get("data_prefix", data.prefix))
    train = frame[split_of(frame, spec.id_column) == "train"]
    if len(train) > drift.reference_rows:
        train = train.sample(drift.reference_rows, random_state=0)
    # the model's inputs as the server receives and logs them (float32 numbers, "" for a missing category)
    columns = {name: values.ravel() for name, values in feature_columns(train, spec).items()}
    model = d.OnnxModel(model_dir / "model.onnx")
    columns[score_feature(spec.label.task)] = (model.predicted_labels(train).astype(str)
                                               if spec.label.task == "multiclass" else model.score(train))
    reference = Reference.build(columns, drift.thresholds.bins)
    reference.save(folder)
    get_run_logger().info("built the drift reference of v%d from %d training rows at %s", version, len(train),
                          lineage["data_commit"][:12])
    return reference


@task(cache_policy=NO_CACHE)
def read_traffic(data: DataConfig, drift: DriftConfig, registry: RegistryConfig, reference: Reference,
                 start: dt.datetime, end: dt.datetime) -> dict[str, pa.ChunkedArray]:
    """The logged rows of the window, as the reference's columns (empty when there are none)."""
    client = LakeFSConnection.load(data.lakefs_block).client()
    table = logs.read_window(client, data.repository, drift.logs_branch, drift.logs_prefix, registry.model_name,
                             start, end)
    return logs.columns_of(table, list(reference.columns))


@task(cache_policy=NO_CACHE)
def labelled_performance(registry: RegistryConfig, data: DataConfig, drift: DriftConfig, version: int,
                         manifest: dict, project: Project) -> Performance | None:
    """Score the labelled rows published to the data branch since the model's data commit (None if none)."""
    client = LakeFSConnection.load(data.lakefs_block).client()
    lineage = manifest.get("lineage", {})
    repository, since = lineage.get("data_repository", data.repository), lineage.get("data_commit")
    if not since:
        return None
    head = wap.resolve_commit(client, repository, data.branch)
    if head == since:
        return None
    frame = wap.read_added_since(client, repository, since, head, data.prefix)
    if frame is None or frame.empty:
        return None
    compression = manifest.get("compression", {})
    metric = project.primary_metric
    chosen = next((row for row in compression.get("table", []) if row.get("name") == compression.get("chosen")), {})
    at_training = float(chosen.get("primary_metric", manifest.get("metrics", {}).get(metric, float("nan"))))
    model = _version_folder(registry, drift, version) / "model" / "model.onnx"  # fetched with the reference
    current = float(d.OnnxModel(model).metrics(frame)[metric])
    drop = at_training - current if project.higher_is_better else current - at_training
    performance = Performance(rows=len(frame), since_commit=since, head_commit=head, metric=metric, current=current,
                              at_training=at_training, drop=drop, degraded=drop > drift.performance_drop)
    get_run_logger().info("v%d on %d labelled rows published since %s: %s %.4f (%.4f at training)", version,
                          len(frame), since[:12], metric, current, at_training)
    return performance


@task(cache_policy=NO_CACHE)
def compare_window(reference: Reference, window: dict[str, pa.ChunkedArray], drift: DriftConfig,
                   project: Project) -> DriftReport:
    """The window against the reference, with the project's per-feature thresholds."""
    rows = len(next(iter(window.values()))) if window else 0
    if rows < drift.min_rows:  # too little traffic to say anything: no data, not a failure
        return DriftReport(status="no data", rows_reference=reference.rows, rows_current=rows, features=[],
                           drifted=[], drifted_share=0.0,
                           reason=f"{rows} rows logged; at least {drift.min_rows} needed")
    return reference.compare(window, drift.thresholds, project.feature_thresholds(drift.thresholds))


@task(cache_policy=NO_CACHE)
def record_decision(report: DriftReport, reference: Reference, window: dict[str, pa.ChunkedArray], data: DataConfig,
                    drift: DriftConfig, registry: RegistryConfig, version: int, manifest: dict,
                    start: dt.datetime, end: dt.datetime, performance: Performance | None = None) -> DriftOutcome:
    """Hysteresis and cooldown, then the report in lakeFS, the artifacts, and the event on drift.

    A degraded score on newly labelled rows makes the window drift even when no feature does.
    """
    client = LakeFSConnection.load(data.lakefs_block).client()
    model = registry.model_name
    previous = [r for r in logs.recent_reports(client, data.repository, drift.logs_branch, model,
                                               drift.confirm_windows + 20) if r.get("version") == version]
    raw_status, reason = report.status, report.reason
    if performance is not None:
        reason += (f"; {performance.metric} {performance.current:.4f} on {performance.rows} labelled rows published "
                   f"since {performance.since_commit[:12]} ({performance.at_training:.4f} at training"
                   + (f", down more than {drift.performance_drop}: degraded)" if performance.degraded else ")"))
        if performance.degraded:
            raw_status = "drift"
    status, emit, why = decide(raw_status, previous, drift.confirm_windows,
                               dt.timedelta(hours=drift.cooldown_hours), end)
    lineage = manifest.get("lineage", {})
    scores = {f.name: round(f.score, 4) for f in report.features}
    record = {"model": model, "version": version, "window_start": start.isoformat(), "window_end": end.isoformat(),
              "raw_status": raw_status, "status": status, "why": why, "event_emitted": emit,
              "performance": performance.model_dump() if performance else None,
              "reference": {"data_repository": lineage.get("data_repository"),
                            "data_commit": lineage.get("data_commit")},
              "report": report.model_dump()}
    plots = plot_features(reference, window, report) if report.features else {}
    commit = logs.save_report(client, data.repository, drift.logs_branch, model, end, record, plots)
    _artifacts(report, reason, status, why, model, version, start, end)
    if emit:
        emit_event(event=DRIFT_DETECTED, resource=model_resource(registry.repository, model),
                   payload={"version": version, "data_repository": lineage.get("data_repository", data.repository),
                            "data_ref": data.branch, "reference_commit": lineage.get("data_commit"),
                            "drifted": report.drifted + (["performance"] if performance and performance.degraded
                                                         else []),
                            "scores": scores, "window_end": end.isoformat(),
                            "report": logs.report_path(model, end), "report_commit": commit})
    get_run_logger().info("%s v%d, %s to %s: %s (%s)", model, version, start.isoformat(), end.isoformat(), status, why)
    return DriftOutcome(model=model, version=version, status=status, reason=f"{reason}; {why}",
                        window_start=start.isoformat(), window_end=end.isoformat(), rows=report.rows_current,
                        drifted=report.drifted, scores=scores, event_emitted=emit, report_commit=commit,
                        performance=performance)


def _artifacts(report: DriftReport, reason: str, status: str, why: str, model: str, version: int,
               start: dt.datetime, end: dt.datetime) -> None:
    rows = [{"feature": f.name, "kind": f.kind, "score": round(f.score, 4),
             "psi": None if f.psi is None else round(f.psi, 4), "ks": None if f.ks is None else round(f.ks, 4),
             "unseen share": f.unseen_share, "NaN share": round(f.nan_fraction_current, 4),
             "drifted": f.drifted} for f in report.features]
    if rows:
        create_table_artifact(table=rows, key="drift-features", description=f"{model} v{version}: feature drift")
    lines = [f"# Drift of {model} v{version}: {status}", "",
             f"Window {start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC, {report.rows_current} rows against "
             f"{report.rows_reference} reference rows. {reason}; {why}.", ""]
    if report.features:
        lines += ["| feature | score | drifted |", "| --- | ---: | --- |"]
        lines += [f"| {f.name} | {f.score:.4f} | {'yes' if f.drifted else ''} |" for f in report.features]
    create_markdown_artifact(markdown="\n".join(lines) + "\n", key="drift-report",
                             description=f"{model} v{version}: {status}")
