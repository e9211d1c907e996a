"""Deploy tasks: gate the challenger against the champion, move the alias, switch the server, smoke-test.

`move_alias` and `switch_server` carry rollback hooks: inside the deploy flow's transaction, a
failure of any later step puts the alias back and makes the server load the previous version again.
The alias in lakeFS is the durable record, so a rollback is idempotent and a crashed deploy can be
finished by hand with `lakeloop models rollback`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.transactions import Transaction
from pydantic import BaseModel

from blocks import LakeFSConnection
from lakeloop import deploy as d
from lakeloop.config import DeployConfig, RegistryConfig
from lakeloop.events import model_resource
from lakeloop.project import Project
from lakeloop.registry import Registry
from lakeloop.secrets import serving_keys

ONNX = "model.onnx"


class GateResult(BaseModel):
    challenger: int
    champion: int | None
    metric: str
    challenger_score: float
    champion_score: float | None
    tolerance: float
    rows: int
    passed: bool
    explanation: str


def _actor() -> str:
    return f"prefect:{flow_run.get_flow_name() or 'deploy-model'}/{flow_run.get_id() or ''}"


def _registry(registry: RegistryConfig) -> Registry:
    return LakeFSConnection.load(registry.lakefs_block).registry(registry.repository, registry.storage_namespace)


def _model_file(registry: RegistryConfig, deploy: DeployConfig, version: int) -> Path:
    """A verified local copy of a version's ONNX file (signature and sha256 checked on every fetch)."""
    dest = Path(deploy.work_root) / registry.model_name / f"v{version}"
    _registry(registry).fetch(registry.model_name, version, dest, only=[ONNX])
    return dest / ONNX


def _server(registry: RegistryConfig, deploy: DeployConfig) -> d.ServerClient:
    vault = LakeFSConnection.load(registry.lakefs_block).vault.client()
    key = serving_keys(vault)[0]
    return d.ServerClient(deploy.server_url, registry.model_name, key)


@task(cache_policy=NO_CACHE)
def read_manifest(registry: RegistryConfig, version: int) -> dict:
    """The challenger's verified manifest (its lineage names the data commit to test on)."""
    return _registry(registry).manifest(registry.model_name, version)


@task(cache_policy=NO_CACHE)
def current_champion(registry: RegistryConfig, alias: str) -> int | None:
    return _registry(registry).alias(registry.model_name, alias)


@task(cache_policy=NO_CACHE)
def gate_challenger(version: int, champion: int | None, frame: pd.DataFrame, registry: RegistryConfig,
                    deploy: DeployConfig, project: Project) -> GateResult:
    """Score challenger and champion — the verified ONNX files — on the same test split, on the project's
    primary metric in its direction."""
    test = d.test_rows(frame, project.id)
    decision = d.gate(_model_file(registry, deploy, version),
                      _model_file(registry, deploy, champion) if champion is not None else None,
                      test, project.primary_metric, deploy.tolerance, project.higher_is_better)
    result = GateResult(challenger=version, champion=champion, metric=decision.metric,
                        challenger_score=decision.challenger, champion_score=decision.champion,
                        tolerance=decision.tolerance, rows=decision.rows, passed=decision.passed,
                        explanation=decision.explain())
    get_run_logger().info("gate: %s", result.explanation)
    return result


@task(cache_policy=NO_CACHE)
def move_alias(registry: RegistryConfig, version: int, alias: str, reason: str) -> int | None:
    """Point the alias at `version` (one lakeFS commit); returns the version it pointed at before."""
    reg = _registry(registry)
    before = reg.alias(registry.model_name, alias)
    reg.promote(registry.model_name, version, alias, _actor(), reason)
    return before


# The rollback hooks read what the deploy flow stored on its transaction: registry, deploy, previous.

@move_alias.on_rollback
def _restore_alias(txn: Transaction) -> None:
    registry, alias, before = txn.get("registry"), txn.get("deploy").alias, txn.get("previous")
    reg = _registry(registry)
    if before is None:
        reg.unset(registry.model_name, alias, _actor(), "deploy rolled back")
    else:
        reg.promote(registry.model_name, before, alias, _actor(), "deploy rolled back")


@task(cache_policy=NO_CACHE)
def switch_server(registry: RegistryConfig, deploy: DeployConfig, version: int) -> None:
    """Make the server load the alias's new version now, and wait until it serves it."""
    with _server(registry, deploy) as server:
        server.reload(str(version), timeout=deploy.swap_timeout)


@switch_server.on_rollback
def _reload_previous(txn: Transaction) -> None:
    registry, deploy, before = txn.get("registry"), txn.get("deploy"), txn.get("previous")
    with _server(registry, deploy) as server:  # with nothing served before this deploy, the server stops serving
        server.reload(None if before is None else str(before), timeout=deploy.swap_timeout)


@task(cache_policy=NO_CACHE)
def smoke_test(registry: RegistryConfig, deploy: DeployConfig, version: int, frame: pd.DataFrame,
               project: Project) -> int:
    """Test rows through the public V2 endpoint: the new version must answer, as the registry's file does."""
    rows = d.test_rows(frame, project.id).head(deploy.smoke_rows)
    expected = d.score(_model_file(registry, deploy, version), rows)
    with _server(registry, deploy) as server:
        server.smoke(rows, str(version), expected)
    return len(rows)


def announce(event: str, registry: RegistryConfig, alias: str, version: int, previous: int | None,
             detail: str) -> None:
    emit_event(event=event,
               resource=model_resource(registry.repository, registry.model_name),
               payload={"version": version, "previous": previous, "alias": alias, "detail": detail})


@task(cache_policy=NO_CACHE)
def publish_deploy_report(gate: GateResult, outcome: str, detail: str) -> None:
    champion = "none" if gate.champion is None else f"v{gate.champion} ({gate.champion_score:.4f})"
    markdown = (f"# deploy-model: v{gate.challenger} {outcome}\n\n| | |\n| --- | --- |\n"
                f"| challenger | v{gate.challenger} ({gate.challenger_score:.4f}) |\n| champion | {champion} |\n"
                f"| metric | {gate.metric}, tolerance {gate.tolerance}, {gate.rows} test rows |\n"
                f"| outcome | {outcome}: {detail} |\n")
    create_markdown_artifact(markdown=markdown, key="deploy-model", description=f"v{gate.challenger} {outcome}")


@task(cache_policy=NO_CACHE)
def roll_back_alias(registry: RegistryConfig, reason: str) -> tuple[int, int]:
    """Production goes back to `previous` (one lakeFS commit); returns (from version, to version)."""
    reg = _registry(registry)
    current = reg.alias(registry.model_name, "production")
    back_to = reg.rollback(registry.model_name, _actor(), reason)
    return current, back_to
