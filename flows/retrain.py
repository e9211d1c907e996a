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
def retrain(data: DataConfig | None = None, training: TrainingConfig | None = None,
            compression: CompressionConfig | None = None, registry: RegistryConfig | None = None,
            deploy: DeployConfig | None = None, ref: str | None = None, reason: str = "manual") -> RetrainResult:
    """Train on the data at `ref` (default: the published branch), compress, register, and deploy behind
    the champion gate. `reason` records what started it (drift, new data, a person)."""
    data = data or DataConfig()
    get_run_logger().info("retraining on %s@%s (%s)", data.repository, ref or data.branch, reason)
    run = train_model(data=data, training=training, ref=ref)
    report = compress_model(run, data=data, compression=compression)
    version = register(run.workdir, report, registry)
    result = deploy_model(version.version, data=data, registry=registry, deploy=deploy)
    return RetrainResult(data_commit=run.data_commit, version=version.version, chosen=report.chosen, deploy=result,
                         reason=reason, training=run, compression=report)
