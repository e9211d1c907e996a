"""`retrain`: pull → train → compress → register → deploy, as one flow that triggers start."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.compress import compress_model
from flows.deploy import DeployResult, deploy_model
from flows.register import register
from flows.train import train_model
from lakeloop.compression import CompressionReport
from lakeloop.config import CompressionConfig, DataConfig, DeployConfig, RegistryConfig, TrainingConfig
from lakeloop.project import resolve_project
from tasks.training import TrainResult


class RetrainResult(BaseModel):
    data_commit: str
    version: int
    chosen: str
    deploy: DeployResult
    reason: str = ""
    training: TrainResult | None = None
    compression: CompressionReport | None = None


# The result is persisted so that whoever started the run (`lakeloop demo`, a script) can read it back.
@flow(name="retrain", log_prints=True, persist_result=True)
def retrain(project: str, data: DataConfig | None = None, training: TrainingConfig | None = None,
            compression: CompressionConfig | None = None, registry: RegistryConfig | None = None,
            deploy: DeployConfig | None = None, ref: str | None = None, reason: str = "manual") -> RetrainResult:
    """Train the project's model on the data at `ref` (default: the published branch), compress, register,
    and deploy behind the champion gate. `reason` records what started it (drift, new data, a person)."""
    spec = resolve_project(project)
    data = data or spec.data
    registry = (registry or RegistryConfig()).named(spec.name)
    get_run_logger().info("retraining %s on %s@%s (%s)", spec.name, data.repository, ref or data.branch, reason)
    run = train_model(project=project, data=data, training=training, ref=ref)
    report = compress_model(run, data=data, compression=compression)
    version = register(run.workdir, report, registry)
    result = deploy_model(version.version, project=project, data=data, registry=registry, deploy=deploy)
    return RetrainResult(data_commit=run.data_commit, version=version.version, chosen=report.chosen, deploy=result,
                         reason=reason, training=run, compression=report)
