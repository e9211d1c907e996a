"""Training tasks: prepare the run folder, launch torchrun, publish the metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from lakeloop.config import DataConfig, TrainingConfig
from lakeloop.modeling.run import launch, prepare_run, record_lineage
from lakeloop.project import Project, project_schemas


class TrainResult(BaseModel):
    """What a training run produced: where it lives, what data it read, how it scored."""

    workdir: str
    project: str
    task: str
    primary_metric: str
    data_repository: str
    data_prefix: str
    data_commit: str
    test_metrics: dict[str, float]
    history: list[dict[str, float]]
    resumed: bool
    world_size: int


def _code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@task(cache_policy=NO_CACHE)
def prepare_training(project: Project, frame: pd.DataFrame, commit_id: str, data: DataConfig,
                     training: TrainingConfig) -> str:
    """Encode the pinned commit's splits and fit the feature spec into the run folder."""
    lineage = {"data_repository": data.repository, "data_prefix": data.prefix, "code_version": _code_version(),
               "config": training.model_dump()}
    nullable = frozenset(c for c, column in project_schemas(project).published.columns.items() if column.nullable)
    return str(prepare_run(project, frame, commit_id, training, lineage, nullable))


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def train_with_torchrun(project: Project, workdir: str, training: TrainingConfig, data: DataConfig,
                        commit_id: str) -> TrainResult:
    """Train under torchrun (DDP over `devices` times `nodes` processes); a retry resumes from the last checkpoint."""
    result = launch(Path(workdir), training)
    record_lineage(Path(workdir), metrics=result["test_metrics"], history=result["history"],
                   world_size=result["world_size"], precision=result["precision"])
    return TrainResult(workdir=workdir, project=project.name, task=project.task,
                       primary_metric=project.primary_metric, data_repository=data.repository, data_prefix=data.prefix,
                       data_commit=commit_id,
                       test_metrics={k: float(v) for k, v in result["test_metrics"].items()},
                       history=result["history"], resumed=result["resumed"], world_size=result["world_size"])


@task(cache_policy=NO_CACHE)
def publish_training_report(result: TrainResult) -> str:
    """The test metrics and loss curve as a Prefect artifact (and beside the run, for the manifest)."""
    m = result.test_metrics
    lines = [f"# {result.project} ({result.task}): training on {result.data_repository}@{result.data_commit[:12]}",
             "",
             f"World size {result.world_size}; resumed from a checkpoint: {result.resumed}.", "",
             "| metric (test split) | value |", "| --- | ---: |"]
    lines += [f"| {k}{' (primary)' if k == result.primary_metric else ''} | {v:.4f} |" for k, v in m.items()
              if k not in ("rows", "positives")]
    lines += [f"| test rows | {int(m['rows'])} |", "",
              "| epoch | train loss | val loss |", "| ---: | ---: | ---: |"]
    lines += [f"| {int(h['epoch'])} | {h.get('train_loss', float('nan')):.4f} | {h.get('val_loss', float('nan')):.4f} |"
              for h in result.history]
    markdown = "\n".join(lines) + "\n"
    (Path(result.workdir) / "training-report.md").write_text(markdown)
    create_markdown_artifact(markdown=markdown, key="train-model-metrics",
                             description=f"test metrics of the model trained on {result.data_commit[:12]}")
    return markdown
