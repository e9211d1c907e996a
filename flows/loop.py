"""The whole loop, end to end, driven the way an operator drives it: what `make run` shows.

Nothing here calls `retrain`. Runs are started by the triggers in deployments.yaml and run on the
stack's process worker: a merge into main (the lakeFS action calls the webhook receiver, which
emits `lakeloop.data.published`), and confirmed drift (`monitor-drift` emits
`lakeloop.drift.detected`). This module publishes batches, sends traffic to the model server,
runs `monitor-drift`, and waits for the runs the automations create, reading their results back.

It drives any example project whose folder has a `generate.py` with `generate(rows, seed, drift)`
(drift: None, "traffic" or "labelled") and, optionally, `broken(rows, seed)` (see examples/fraud).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import httpx
from prefect import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import BaseModel

from blocks import LakeFSConnection
from flows.drift import monitor_drift
from flows.ingest import ingest_data
from flows.retrain import RetrainResult
from lakeloop.config import DataConfig
from lakeloop.deploy import ServerClient
from lakeloop.errors import DataValidationError, LakeloopError
from lakeloop.project import Project, project_module
from lakeloop.secrets import serving_keys
from tasks.drift import DriftOutcome

Progress = Callable[[str], None]


class BatchOutcome(BaseModel):
    source: str
    status: Literal["published", "quarantined", "failed"]
    location: str  # the commit on the published branch, or the quarantine branch
    detail: str
    rows: int = 0
    problems: list[str] = []
    commit_id: str = ""
    already_published: bool = False


class TriggeredRun(BaseModel):
    """A `retrain` run that an automation started, and what it did."""

    name: str
    url: str
    trigger: str  # who created the run (the automation)
    reason: str  # its `reason` parameter, filled from the event
    latency_s: float  # from the automation creating the run to the run running on the worker
    duration_s: float
    result: RetrainResult


def sample(project: Project, rows: int, seed: int, drift: str | None = None):
    """Rows from the example project's generator (`generate.py`)."""
    return project_module(project, "generate").generate(rows, seed=seed, drift=drift)


def write_sample_batches(folder: Path, project: Project, rows: int, seed: int) -> tuple[Path, Path | None]:
    """A good batch and, if the example has `broken()`, one the schema must quarantine."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / f"{project.name}-seed{seed}.parquet"
    sample(project, rows, seed).to_parquet(good)
    generator = project_module(project, "generate")
    if not hasattr(generator, "broken"):
        return good, None
    broken = folder / f"{project.name}-seed{seed + 1}-broken.csv"
    generator.broken(max(rows // 10, 50), seed=seed + 1).to_csv(broken, index=False)
    return good, broken


def publish(source: Path, project: Project) -> BatchOutcome:
    """Run ingest-data on one batch: published to the project's branch, or quarantined with its problems."""
    data = project.data
    state = ingest_data(str(source), project=project.root, return_state=True)
    if state.is_completed():
        result = state.result()
        detail = "already published" if result.already_published else f"{result.rows} rows published"
        return BatchOutcome(source=str(source), status="published", detail=detail, rows=result.rows,
                            location=f"{data.repository}/{data.branch}@{result.commit_id[:12]}",
                            commit_id=result.commit_id, already_published=result.already_published)
    error = state.result(raise_on_failure=False)
    context = getattr(error, "context", {})
    quarantined = isinstance(error, DataValidationError) and "branch" in context
    return BatchOutcome(source=str(source), status="quarantined" if quarantined else "failed", detail=str(error),
                        location=f"{data.repository}/{context['branch']}" if quarantined else "-",
                        rows=context.get("rows", 0), problems=context.get("problems", []))


def request_retrain(webhook_url: str, token: str, project: str, reason: str) -> None:
    """Ask for retraining as a CI system does (POST /hooks/retrain): for data that was already published."""
    answer = httpx.post(f"{webhook_url}/hooks/retrain",
                        json={"project": project, "reason": reason, "requested_by": "make run"},
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)
    if answer.status_code != 202:
        raise LakeloopError(f"the webhook receiver at {webhook_url} refused the retrain request: "
                            f"{answer.status_code} {answer.text[:200]}")


def wait_for_triggered_run(since: dt.datetime, ui_url: str, progress: Progress, seen: set[str],
                           deployment: str, timeout: float = 900) -> TriggeredRun:
    """Wait for the next run of `deployment` created after `since`, follow it to the end, read its result."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        run = None
        while run is None:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50)
            fresh = [r for r in runs if r.created and r.created >= since and str(r.id) not in seen]
            run = fresh[0] if fresh else None
            if run is None:
                if time.monotonic() > deadline:
                    raise LakeloopError(f"no {deployment} run was started within {timeout:.0f} s: is the worker "
                                        "running (`lakeloop dev status`) and the automation enabled "
                                        f"({ui_url}/automations)?")
                time.sleep(0.5)
        seen.add(str(run.id))
    return follow_run(run.id, ui_url, progress, deadline - time.monotonic())


def follow_run(run_id, ui_url: str, progress: Progress, timeout: float = 900) -> TriggeredRun:
    """Follow a run to its end, printing its state and stage as they change; read its result.

    Raises:
        LakeloopError: the run ended in any state but Completed, or did not end within `timeout` s.
    """
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        flow = client.read_flow(run.flow_id).name
        deployment = f"{flow}/{client.read_deployment(run.deployment_id).name}" if run.deployment_id else flow
        url = f"{ui_url}/runs/flow-run/{run.id}"
        reason = run.parameters.get("reason", "")
        progress(f"{deployment} run {run.name} started by {_creator(run)} ({reason}): {url}")
        last = ""
        while not (run.state and run.state.is_final()):
            if time.monotonic() > deadline:
                raise LakeloopError(f"{deployment} run {run.name} did not finish within {timeout:.0f} s: {url}")
            time.sleep(1)
            run = client.read_flow_run(run.id)
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])), sort=FlowRunSort.START_TIME_DESC,
                limit=1)
            stage = _stage(client, children)
            line = f"{run.name}: {run.state.name}" + (f", {stage}" if stage else "")
            if line != last:
                progress(line)
                last = line
        if not run.state.is_completed():
            raise LakeloopError(f"{deployment} run {run.name} ended {run.state.name}: {run.state.message} — "
                                f"logs at {url}")
        result = run.state.result()
    started = run.start_time or run.created
    return TriggeredRun(name=run.name, url=url, trigger=_creator(run), reason=str(run.parameters.get("reason", "")),
                        latency_s=(started - run.created).total_seconds(),
                        duration_s=(run.end_time - started).total_seconds() if run.end_time else 0.0, result=result)


def _creator(run) -> str:
    created_by = run.created_by
    if created_by is None:
        return "a person or script"
    kind = str(created_by.type or "").lower()
    return f"{kind} “{created_by.display_value}”" if created_by.display_value else kind


def _stage(client, children) -> str:
    """The subflow a retrain run is in (train-model, compress-model, ...)."""
    if not children or not children[0].state:
        return ""
    flow = client.read_flow(children[0].flow_id)
    return f"{flow.name} {children[0].state.name.lower()}"


def serving_key(data: DataConfig) -> str:
    return serving_keys(LakeFSConnection.load(data.lakefs_block).vault.client())[0]


def send_traffic(url: str, key: str, project: Project, seed: int, drift: str | None = None,
                 shapes: tuple[tuple[int, int], ...] = ((1, 500), (64, 100))) -> list[dict]:
    """Fresh rows through the V2 endpoint, as a client sends them; waits until the server has logged them."""
    frame = sample(project, 20_000, seed, drift)
    before = logged_rows(url, key)
    with ServerClient(url, project.name, key) as client:
        figures = [client.traffic(frame, batch, requests) for batch, requests in shapes]
    expected = before + sum(batch * requests for batch, requests in shapes)
    deadline = time.monotonic() + 60
    while logged_rows(url, key) < expected:  # the server writes its inference logs to lakeFS every 2 s
        if time.monotonic() > deadline:
            raise LakeloopError(f"the model server at {url} logged {logged_rows(url, key)} of {expected} rows within "
                                "60 s: see its log and /metrics")
        time.sleep(0.25)
    return figures


def logged_rows(url: str, key: str) -> int:
    """Rows the server has written to its inference logs (its /metrics)."""
    answer = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    answer.raise_for_status()
    text = answer.text
    found = re.search(r"^lakeloop_inference_log_written_rows (\d+)", text, re.M)
    return int(found.group(1)) if found else 0


def check_drift(since: dt.datetime, state_dir: Path, project: Project) -> DriftOutcome:
    """monitor-drift over the traffic served since `since` (the hourly schedule does the same per hour)."""
    now = dt.datetime.now(dt.UTC)
    hours = max((now - since).total_seconds(), 1) / 3600
    config = project.drift.model_copy(update={"window_hours": hours, "work_root": str(state_dir / "drift")})
    return monitor_drift(project=project.root, drift=config, window_end=now)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
