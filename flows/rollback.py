"""`rollback-model`: production goes back to the previous version, and the server follows at once."""

from __future__ import annotations

from prefect import flow, get_run_logger

from lakeloop.config import DeployConfig, RegistryConfig
from lakeloop.project import resolve_project
from tasks.deploy import announce, roll_back_alias, switch_server


@flow(name="rollback-model", log_prints=True)
def rollback_model(project: str, reason: str, registry: RegistryConfig | None = None,
                   deploy: DeployConfig | None = None) -> int:
    """Point the project's production at the previous version (the registry keeps it as `previous`), make
    the model server load it, emit `lakeloop.model.rolled-back`; returns the version now serving."""
    spec = resolve_project(project)
    registry, deploy = (registry or RegistryConfig()).named(spec.name), deploy or spec.deploy
    current, back_to = roll_back_alias(registry, reason)
    switch_server(registry, deploy, back_to)
    announce("lakeloop.model.rolled-back", registry, "production", back_to, current, f"manual rollback: {reason}")
    get_run_logger().info("production is back on v%d (was v%d): %s", back_to, current, reason)
    return back_to
