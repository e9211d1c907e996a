"""`compress-model`: ONNX candidates of a trained run, chosen by measurement behind accuracy gates."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from lakeloop.compression import CompressionReport
from lakeloop.config import CompressionConfig, DataConfig
from lakeloop.project import Project
from tasks.compression import build_and_measure, publish_compression_report
from tasks.data import pull
from tasks.training import TrainResult


@flow(name="compress-model", log_prints=True)
def compress_model(run: TrainResult, data: DataConfig | None = None,
                   compression: CompressionConfig | None = None) -> CompressionReport:
    """Build FP32, INT8 dynamic, INT8 static QDQ, pruned and distilled ONNX models of `run`; measure
    each on the run's own data commit; choose the fastest that passes the gates (else FP32)."""
    project = Project.from_json((Path(run.workdir) / "project.json").read_text())  # as it was trained
    data = (data or project.data).model_copy(update={"repository": run.data_repository, "prefix": run.data_prefix})
    _, frame = pull(data, run.data_commit, project)
    report = build_and_measure(run.workdir, frame, compression or project.compression)
    publish_compression_report(report)
    get_run_logger().info("chose %s (%s %.4f vs %.4f uncompressed)%s", report.chosen, report.primary_metric,
                          next(r["primary_metric"] for r in report.table if r["name"] == report.chosen),
                          report.baseline, "; reused the measurement of the same weights and config"
                          if report.reused else "")
    return report
