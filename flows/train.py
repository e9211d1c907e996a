"""`train-model`: train the fraud model on a pinned lakeFS commit with Lightning under torchrun."""

from __future__ import annotations

from prefect import flow, get_run_logger

from lakeloop.config import DataConfig, TrainingConfig
from tasks.data import pull
from tasks.training import TrainResult, prepare_training, publish_training_report, train_with_torchrun


@flow(name="train-model", log_prints=True)
def train_model(data: DataConfig | None = None, training: TrainingConfig | None = None,
                ref: str | None = None) -> TrainResult:
    """Pull the dataset at `ref` (default: the published branch), pin its commit, train, report.

    The same commit, config and seed give the same metrics on CPU; a re-run resumes from the run's
    last checkpoint.
    """
    data, training = data or DataConfig(), training or TrainingConfig()
    commit_id, frame = pull(data, ref)
    workdir = prepare_training(frame, commit_id, data, training)
    result = train_with_torchrun(workdir, training, data, commit_id)
    publish_training_report(result)
    get_run_logger().info("trained on %s@%s: test PR AUC %.4f, ROC AUC %.4f", data.repository, commit_id[:12],
                          result.test_metrics["pr_auc"], result.test_metrics["roc_auc"])
    return result
