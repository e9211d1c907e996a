"""`monitor-drift`: compare a window of the production model's traffic with what it was trained on."""

from __future__ import annotations

import datetime as dt

from prefect import flow

from lakeloop.config import DataConfig, DriftConfig, RegistryConfig
from lakeloop.project import resolve_project
from tasks.drift import (
    DriftOutcome,
    compare_window,
    drift_reference,
    labelled_performance,
    production_model,
    read_traffic,
    record_decision,
    score_feature,
)


@flow(name="monitor-drift", log_prints=True)
def monitor_drift(project: str, data: DataConfig | None = None, registry: RegistryConfig | None = None,
                  drift: DriftConfig | None = None, window_end: dt.datetime | None = None) -> DriftOutcome:
    """Score the last `window_hours` of logged traffic against the production model's training data.

    Numbers: normalised Wasserstein and PSI (KS reported); categories: Jensen-Shannon (chi-square
    reported, unseen categories counted); the model's score as well; and, when labelled rows were
    published since the model's data commit, its primary metric on them. A confirmed drift (see
    `confirm_windows`, `cooldown_hours`) emits `lakeloop.drift.detected`, which starts `retrain`.
    The report and plots are committed to lakeFS next to the logs; the table is a Prefect artifact.
    """
    spec = resolve_project(project)
    data, drift = data or spec.data, drift or spec.drift
    registry = (registry or RegistryConfig()).named(spec.name)
    score, keys = score_feature(spec.task), drift.thresholds.key_features
    if drift.score_is_key and score not in keys:
        drift = drift.model_copy(update={"thresholds": drift.thresholds.model_copy(update={"key_features": [*keys,
                                                                                                          score]})})
    end = (window_end or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    start = end - dt.timedelta(hours=drift.window_hours)
    version, manifest = production_model(registry)
    if version is None:
        return DriftOutcome(model=registry.model_name, version=None, status="no model",
                            reason=f"{registry.model_name}@production is not set: nothing is served yet",
                            window_start=start.isoformat(), window_end=end.isoformat())
    reference = drift_reference(registry, data, drift, version, manifest, spec)
    window = read_traffic(data, drift, registry, reference, start, end)
    report = compare_window(reference, window, drift, spec)
    performance = labelled_performance(registry, data, drift, version, manifest, spec)
    return record_decision(report, reference, window, data, drift, registry, version, manifest, start, end,
                           performance)
