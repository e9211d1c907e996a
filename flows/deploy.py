"""`deploy-model`: gate a registered version against the champion, then switch production in one transaction."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.transactions import transaction
from pydantic import BaseModel

from lakeloop.config import DataConfig, DeployConfig, RegistryConfig
from lakeloop.errors import DeploymentError
from lakeloop.project import resolve_project
from tasks.data import pull
from tasks.deploy import (
    GateResult,
    announce,
    current_champion,
    gate_challenger,
    move_alias,
    publish_deploy_report,
    read_manifest,
    smoke_test,
    switch_server,
)


class DeployResult(BaseModel):
    version: int
    status: Literal["deployed", "rejected", "unchanged"]
    previous: int | None
    gate: GateResult | None = None
    smoke_rows: int = 0
    detail: str = ""


@flow(name="deploy-model", log_prints=True)
def deploy_model(version: int, project: str, data: DataConfig | None = None,
                 registry: RegistryConfig | None = None, deploy: DeployConfig | None = None) -> DeployResult:
    """Put `version` into service if it is not worse than the champion on the same test split.

    Gate, then in one Prefect transaction: move the alias, make the server load the version, smoke-test
    it through the V2 endpoint. Any failure rolls the alias back and reloads the previous version,
    emits `lakeloop.model.rolled-back` and fails the run; success emits `lakeloop.model.deployed`. A
    challenger that loses the gate is `rejected`: nothing moves, and the run completes.
    """
    spec = resolve_project(project)
    data, deploy = data or spec.data, deploy or spec.deploy
    registry = (registry or RegistryConfig()).named(spec.name)
    logger = get_run_logger()
    manifest = read_manifest(registry, version)
    champion = current_champion(registry, deploy.alias)
    if champion == version:
        return DeployResult(version=version, status="unchanged", previous=champion,
                            detail=f"v{version} already is {deploy.alias}")
    lineage = manifest.get("lineage", {})
    data = data.model_copy(update={"repository": lineage.get("data_repository", data.repository),
                                   "prefix": lineage.get("data_prefix", data.prefix)})
    _, frame = pull(data, lineage.get("data_commit"), spec)
    gate = gate_challenger(version, champion, frame, registry, deploy, spec)
    if not gate.passed:
        publish_deploy_report(gate, "rejected", gate.explanation)
        logger.warning("v%d rejected: %s", version, gate.explanation)
        return DeployResult(version=version, status="rejected", previous=champion, gate=gate, detail=gate.explanation)
    try:
        with transaction() as txn:
            txn.set("registry", registry)
            txn.set("deploy", deploy)
            txn.set("previous", champion)
            move_alias(registry, version, deploy.alias, reason=gate.explanation)
            switch_server(registry, deploy, version)
            rows = smoke_test(registry, deploy, version, frame, spec)
    except Exception as exc:
        back = f"v{champion}" if champion is not None else "nothing"
        detail = f"{exc}; {deploy.alias} is back on {back}"
        announce("lakeloop.model.rolled-back", registry, deploy.alias, version, champion, detail)
        publish_deploy_report(gate, "rolled back", detail)
        raise DeploymentError(f"deploying {registry.model_name} v{version} failed and was rolled back: {detail}",
                              version=version, previous=champion) from exc
    detail = f"{deploy.alias} = v{version} (was {'nothing' if champion is None else f'v{champion}'})"
    announce("lakeloop.model.deployed", registry, deploy.alias, version, champion, detail)
    publish_deploy_report(gate, "deployed", detail)
    logger.info("deployed: %s; smoke test on %d rows passed", detail, rows)
    return DeployResult(version=version, status="deployed", previous=champion, gate=gate, smoke_rows=rows,
                        detail=detail)
