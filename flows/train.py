"""`train-model`: train a project's model on a pinned lakeFS commit with Lightning under torchrun."""

from __future__ import annotations

from prefect import flow, get_run_logger

from lakeloop.config import DataConfig, TrainingConfig
from lakeloop.project import resolve_project
from tasks.data import pull
from tasks.training import TrainResult, prepare_training, publish_training_report, train_with_torchrun


@flow(name="train-model", log_prints=True)
def train_model(project: str, data: DataConfig | None = None, training: TrainingConfig | None = None,
                ref: str | None = None) -> TrainResult:
    """Pull the project's dataset at `ref` (default: the published branch), pin its commit, train, report.

    `project` is a project folder or a project's name; `data` and `training` override its sections.
    The same commit, config and seed give the same metrics on CPU; a re-run resumes from the run's
    last checkpoint.
    """
    spec = resolve_project(project)
    data, training = data or spec.data, training or spec.training
    commit_id, frame = pull(data, ref, spec)
    workdir = prepare_training(spec, frame, commit_id, data, training)
    result = train_with_torchrun(spec, workdir, training, data, commit_id)
    publish_training_report(result)
    get_run_logger().info("trained %s on %s@%s: test %s %.4f", spec.name, data.repository, commit_id[:12],
                          spec.primary_metric, result.test_metrics[spec.primary_metric])
    return result
