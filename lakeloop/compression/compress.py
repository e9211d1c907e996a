"""Build every candidate of a trained run, measure it, gate it, choose one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel

from lakeloop.compression import candidates as c
from lakeloop.compression.export import export_onnx
from lakeloop.config import CompressionConfig, TrainingConfig
from lakeloop.errors import CompressionGateError
from lakeloop.modeling.features import FeatureSpec, split_of
from lakeloop.modeling.metrics import task_metrics
from lakeloop.modeling.nets import TabularNet, build_net
from lakeloop.modeling.run import run_lock
from lakeloop.project import Project

FP32 = "fp32"


class CompressionReport(BaseModel):
    """The comparison table and the choice, as stored beside the run and in the manifest."""

    workdir: str
    primary_metric: str
    higher_is_better: bool = True
    tolerance: float
    baseline: float  # the uncompressed torch model's primary metric on the test split
    chosen: str
    chosen_path: str
    table: list[dict]
    # what the report was measured from: a run with the same weights and the same config reuses it
    model_sha256: str = ""
    config: dict = {}
    reused: bool = False


def compress(workdir: Path, frame: pd.DataFrame, config: CompressionConfig) -> CompressionReport:
    """Build, measure and gate the candidates of the run in `workdir` on its data `frame`.

    The gate metric is the project's primary metric, compared in its direction. Pruning and
    distillation need the built-in net; a plug-in's run gets FP32 and the quantized candidates.
    The same trained weights with the same config reuse the stored report and candidates instead of
    measuring again: latencies are noisy, so a re-measurement could choose another variant of an
    identical model (a retrain on unchanged data would then deploy a different file).

    Raises:
        CompressionGateError: the FP32 export does not match torch (nothing can be chosen).
    """
    with run_lock(workdir):  # two compressions of one run never write the same candidates at once
        return _compress(workdir, frame, config)


def _compress(workdir: Path, frame: pd.DataFrame, config: CompressionConfig) -> CompressionReport:
    weights = hashlib.sha256((workdir / "model.pt").read_bytes()).hexdigest()
    stored = workdir / "compression.json"
    if stored.exists():
        previous = CompressionReport.model_validate_json(stored.read_text())
        if (previous.model_sha256 == weights and previous.config == config.model_dump()
                and Path(previous.chosen_path).is_file()):
            return previous.model_copy(update={"reused": True})
    training = TrainingConfig.model_validate_json((workdir / "config.json").read_text())
    spec = FeatureSpec.from_json((workdir / "features.json").read_text())
    project = Project.from_json((workdir / "project.json").read_text())
    net = build_net(spec, project.model, project)
    net.load_state_dict(torch.load(workdir / "model.pt"))
    net.eval()
    with np.load(workdir / "arrays.npz") as data:
        arrays = {k: data[k] for k in data.files}
    split = split_of(frame, project.id)
    test, train = frame[split == "test"].reset_index(drop=True), frame[split == "train"]
    targets = spec.targets(test)
    metric, higher = project.primary_metric, project.higher_is_better
    options = {"task": project.task, "pos_weight": training.pos_weight,
               "class_weights": spec.extra.get("class_weights"), "regression_loss": training.regression_loss}
    out = workdir / "candidates"
    out.mkdir(exist_ok=True)

    teacher = c.torch_outputs(net, spec, test)
    baseline = task_metrics(project.task, targets, teacher)[metric]
    metadata = {"lakeloop.project": project.name}
    fp32 = export_onnx(net, spec, out / "fp32.onnx", metadata)
    built: list[tuple[str, Path, np.ndarray | None]] = [(FP32, fp32, teacher)]
    if "int8-dynamic" in config.candidates:
        built.append(("int8-dynamic", c.quantize_dynamic_int8(fp32, out / "int8-dynamic.onnx"), None))
    if "int8-static-qdq" in config.candidates:
        sample = train.sample(n=min(config.calibration_rows, len(train)), random_state=training.seed)
        built.append(("int8-static-qdq", c.quantize_static_qdq(fp32, out / "int8-static-qdq.onnx", sample, spec),
                      None))
    builtin = isinstance(net, TabularNet)
    if "pruned" in config.candidates and builtin:
        pruned = c.fine_tune(c.prune_units(net, config.prune_keep_fraction), arrays, config.fine_tune_epochs,
                             training.global_batch_size, training.seed, training.learning_rate / 3, options)
        built.append(("pruned", export_onnx(pruned, spec, out / "pruned.onnx", metadata),
                      c.torch_outputs(pruned, spec, test)))
    if "distilled" in config.candidates and builtin:
        student = c.distill(net, spec, arrays, tuple(config.student_hidden), config.distill_epochs,
                            training.global_batch_size, training.seed, options)
        built.append(("distilled", export_onnx(student, spec, out / "distilled.onnx", metadata),
                      c.torch_outputs(student, spec, test)))

    measured = [c.measure(name, path, test, spec, targets, twin, metric, config.latency_repeat)
                for name, path, twin in built]
    chosen = c.gate(measured, baseline, config.tolerance, FP32, higher)
    fp32_row = measured[0]
    if fp32_row.parity_max_abs is None or fp32_row.parity_max_abs > c.PARITY_LIMIT:
        raise CompressionGateError(f"the FP32 ONNX export of {workdir} differs from torch by "
                                   f"{fp32_row.parity_max_abs:.2e} (limit {c.PARITY_LIMIT:.0e}); nothing can be "
                                   "chosen. Check the export opset and the preprocessing graph", workdir=str(workdir))
    report = CompressionReport(workdir=str(workdir), primary_metric=metric, higher_is_better=higher,
                               tolerance=config.tolerance, baseline=baseline, chosen=chosen.name,
                               chosen_path=chosen.path, table=[m.as_row() for m in measured], model_sha256=weights,
                               config=config.model_dump())
    stored.write_text(report.model_dump_json(indent=2))
    return report


def table_markdown(report: CompressionReport) -> str:
    """The comparison table as markdown (Prefect artifact, README, CLI)."""
    direction = "higher" if report.higher_is_better else "lower"
    lines = [f"Primary metric `{report.primary_metric}` ({direction} is better): uncompressed torch "
             f"{report.baseline:.4f}, tolerance {report.tolerance:.4f}. Chosen: **{report.chosen}**.", "",
             f"| candidate | {report.primary_metric} | worse by | size KiB | ORT ms @1 | ORT ms @64 | parity | gate |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in report.table:
        parity = "-" if row["parity_max_abs"] is None else f"{row['parity_max_abs']:.1e}"
        mark = " ✔" if row["name"] == report.chosen else ""
        lines.append(f"| {row['name']}{mark} | {row['primary_metric']:.4f} | {row['drop']:+.4f} | "
                     f"{row['size_bytes'] / 1024:.1f} | {row['latency_b1_ms']:.3f} | {row['latency_b64_ms']:.3f} | "
                     f"{parity} | {row['reason']} |")
    return "\n".join(lines) + "\n"
