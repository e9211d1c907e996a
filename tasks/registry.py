"""Registry tasks: register a compressed model with its full lineage, signed."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from blocks import LakeFSConnection
from lakeloop.compression import CompressionReport
from lakeloop.config import RegistryConfig
from lakeloop.project import Project
from lakeloop.registry import ModelVersion


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 5])
def register_model(workdir: str, report: CompressionReport, registry: RegistryConfig) -> ModelVersion:
    """One registry commit: the chosen ONNX model, the torch weights and checkpoint, the signed manifest."""
    run = Path(workdir)
    files = {"model.onnx": Path(report.chosen_path), "torch/model.pt": run / "model.pt",
             "torch/last.ckpt": run / "checkpoints" / "last.ckpt", "torch/features.json": run / "features.json"}
    documents = {f"project/{p.name}": p for p in sorted((run / "project").iterdir())}
    files |= documents  # the manifest lists every file's sha256: the project file and schema are in it too
    project = Project.from_json((run / "project.json").read_text())
    lineage = json.loads((run / "lineage.json").read_text())
    details = {"variant": report.chosen, "lineage": {k: v for k, v in lineage.items() if k != "compression"},
               "metrics": lineage.get("metrics", {}), "compression": lineage.get("compression", {}),
               "project": {"name": project.name, "task": project.task, "primary_metric": project.primary_metric,
                           "files": sorted(documents)},
               "flow_run_id": str(flow_run.get_id() or "")}
    reg = LakeFSConnection.load(registry.lakefs_block).registry(registry.repository, registry.storage_namespace)
    return reg.register(registry.model_name, files, details, actor=f"prefect:{flow_run.get_flow_name() or 'task'}")
