"""`demo`: the loop as far as it exists, on generated data — what `make run` shows."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.compress import compress_model
from flows.deploy import DeployResult, deploy_model
from flows.ingest import ingest_data
from flows.register import register
from flows.train import train_model
from lakeloop.compression import CompressionReport
from lakeloop.config import CompressionConfig, DataConfig, DeployConfig, RegistryConfig, TrainingConfig
from lakeloop.data.generate import generate_transactions
from lakeloop.errors import DataValidationError
from lakeloop.registry import ModelVersion
from tasks.training import TrainResult


class BatchOutcome(BaseModel):
    source: str
    status: Literal["published", "quarantined", "failed"]
    location: str  # the commit on the published branch, or the quarantine branch
    detail: str
    rows: int = 0
    problems: list[str] = []


def write_sample_batches(folder: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """A good batch and a deliberately broken one (bad values, PII in free text, an unknown category)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / f"transactions-seed{seed}.parquet"
    generate_transactions(rows, seed=seed).to_parquet(good)
    broken_frame = generate_transactions(max(rows // 10, 50), seed=seed + 1)
    broken_frame.loc[broken_frame.index[:3], "customer_age"] = 7
    broken_frame.loc[broken_frame.index[5], "merchant_note"] = "refund to jane.doe@example.org"
    broken_frame.loc[broken_frame.index[8:10], "merchant_category"] = "casino"
    broken = folder / f"transactions-seed{seed + 1}-broken.csv"
    broken_frame.to_csv(broken, index=False)
    return good, broken


class DemoResult(BaseModel):
    batches: list[BatchOutcome]
    training: TrainResult | None = None
    compression: CompressionReport | None = None
    registered: ModelVersion | None = None
    deployed: DeployResult | None = None


@flow(name="demo", log_prints=True)
def demo(workdir: str = ".lakeloop/samples", rows: int = 20_000, seed: int = 7, epochs: int = 4,
         data: DataConfig | None = None, serving_url: str | None = None) -> DemoResult:
    """The loop as far as it exists: ingest a good and a broken batch (one published, one
    quarantined), train on the published commit, build, measure and choose compressed models,
    register the chosen one, signed, in the lakeFS model registry, and deploy it to the model
    server at `serving_url` (skipped when empty)."""
    data = data or DataConfig()
    logger = get_run_logger()
    outcomes = []
    for source in write_sample_batches(Path(workdir), rows, seed):
        state = ingest_data(str(source), data=data, return_state=True)
        if state.is_completed():
            result = state.result()
            detail = "already published" if result.already_published else f"{result.rows} rows published"
            outcomes.append(BatchOutcome(source=str(source), status="published", detail=detail, rows=result.rows,
                                         location=f"{data.repository}/{data.branch}@{result.commit_id[:12]}"))
        else:
            error = state.result(raise_on_failure=False)
            quarantined = isinstance(error, DataValidationError) and "branch" in error.context
            context = getattr(error, "context", {})
            outcomes.append(BatchOutcome(
                source=str(source), status="quarantined" if quarantined else "failed", detail=str(error),
                location=f"{data.repository}/{context['branch']}" if quarantined else "-",
                rows=context.get("rows", 0), problems=context.get("problems", [])))
        logger.info("%s: %s", source, outcomes[-1].detail)
    if not any(o.status == "published" for o in outcomes):
        return DemoResult(batches=outcomes)
    training = TrainingConfig(epochs=epochs, seed=seed, work_root=str(Path(workdir).parent / "training"))
    run = train_model(data=data, training=training)
    report = compress_model(run, data=data, compression=CompressionConfig())
    registry = RegistryConfig()
    version = register(run.workdir, report, registry)
    deployed = None
    if serving_url:
        deploy = DeployConfig(server_url=serving_url, work_root=str(Path(workdir).parent / "deploy"))
        deployed = deploy_model(version.version, data=data, registry=registry, deploy=deploy)
    return DemoResult(batches=outcomes, training=run, compression=report, registered=version, deployed=deployed)
