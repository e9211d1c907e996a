"""`register-model`: a compressed model into the signed lakeFS registry."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from lakeloop.compression import CompressionReport
from lakeloop.config import RegistryConfig
from lakeloop.project import Project
from lakeloop.registry import ModelVersion
from tasks.registry import register_model


@flow(name="register-model", log_prints=True)
def register(run_workdir: str, report: CompressionReport, registry: RegistryConfig | None = None) -> ModelVersion:
    """Register the chosen variant of a compressed run as the next version (aliases do not move)."""
    project = Project.from_json((Path(run_workdir) / "project.json").read_text())  # the project it was trained for
    registry = (registry or RegistryConfig()).named(project.name)
    version = register_model(run_workdir, report, registry)
    get_run_logger().info("registered %s v%d (%s) at %s", version.name, version.version, report.chosen,
                          version.commit_id[:12])
    return version
