"""Data tasks: read, validate, pseudonymise, stage, audit, publish or quarantine, pull."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL

from blocks import LakeFSConnection
from lakeloop.config import DataConfig, state_path
from lakeloop.data import ValidationReport, pseudonymise, read_batch, validate_batch
from lakeloop.data import _wap as wap
from lakeloop.errors import ConfigError, DataValidationError, LakeFSUnreachableError
from lakeloop.events import DATA_PUBLISHED, data_resource, event_id, lakefs_key
from lakeloop.project import Project, project_documents, project_schemas
from lakeloop.secrets import PII_PATH

LAKEFS_RETRY_DELAYS = [1, 2, 4]


def _unreachable(task, task_run, state) -> bool:
    """Retry only when lakeFS could not be reached; any other failure is final at once."""
    try:
        state.result()
    except LakeFSUnreachableError:
        return True
    except Exception:
        return False
    return False


def _connection(config: DataConfig) -> LakeFSConnection:
    try:
        return LakeFSConnection.load(config.lakefs_block)
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise ConfigError(
            f"no LakeFSConnection block named {config.lakefs_block!r} on the Prefect API at "
            f"{PREFECT_API_URL.value() or 'an ephemeral server'}: start the stack (`lakeloop dev up`, then "
            "`source .lakeloop/env`) or save one (see README, Secrets and blocks)") from exc


# Every task here has side effects or takes a whole frame: nothing is cached (hashing a frame for a
# cache key costs about as much as validating it), and a re-run always does the work again.


@task(cache_policy=NO_CACHE)
def load_batch(source: str) -> pd.DataFrame:
    """Read a parquet or CSV batch file."""
    return read_batch(source)


@task(cache_policy=NO_CACHE)
def validate_raw(frame: pd.DataFrame, source: str, project: Project) -> ValidationReport:
    """Validate a batch against the project's raw schema, collecting every failure."""
    return validate_batch(frame, project_schemas(project).raw, source, sensitive=set(project.pii_columns),
                          label=project.label.column)


@task(cache_policy=NO_CACHE)
def pseudonymise_batch(frame: pd.DataFrame, config: DataConfig, project: Project) -> pd.DataFrame:
    """Apply the project's PII treatments; the pseudonymisation key is read from Vault inside this task."""
    vault = _connection(config).vault.client()
    key = vault.read_key(PII_PATH, "key")
    return pseudonymise(frame, bytes.fromhex(key), project.pii_columns)


def _metadata(source: str, batch_id: str, project: Project) -> dict[str, str]:
    """Provenance on every ingest commit: the batch, the run, and the project file and schema it was checked with."""
    documents = project_documents(project)
    return {"source": source, "batch_id": batch_id, "project": project.name,
            "project_sha256": documents["project"]["sha256"], "schema_sha256": documents["schema"]["sha256"],
            "flow_run_id": str(flow_run.get_id() or ""), "pipeline": "lakeloop.ingest-data"}


@task(retries=3, retry_delay_seconds=LAKEFS_RETRY_DELAYS, retry_condition_fn=_unreachable, cache_policy=NO_CACHE)
def check_published(config: DataConfig, batch_id: str) -> str | None:
    """Open (or create) the repository; return the commit if this batch is already published."""
    conn = _connection(config)
    client = conn.client()
    wap.ensure_repository(client, config.repository, config.namespace(), config.branch)
    return wap.already_published(client, config.repository, config.branch,
                                 wap.data_path(config.prefix, batch_id))


@task(retries=3, retry_delay_seconds=LAKEFS_RETRY_DELAYS, retry_condition_fn=_unreachable, cache_policy=NO_CACHE)
def stage_batch(config: DataConfig, batch_id: str, frame: pd.DataFrame, source: str,
                report: ValidationReport, project: Project) -> wap.StagedBatch:
    """Write the batch and its report to `ingest-<batch>` and commit with provenance metadata."""
    client = _connection(config).client()
    return wap.stage_batch(client, config.repository, config.branch, batch_id, frame,
                           wap.data_path(config.prefix, batch_id), _metadata(source, batch_id, project), report)


@task(retries=3, retry_delay_seconds=LAKEFS_RETRY_DELAYS, retry_condition_fn=_unreachable, cache_policy=NO_CACHE)
def audit_batch(config: DataConfig, staged: wap.StagedBatch, project: Project) -> ValidationReport:
    """Read the committed batch back from lakeFS and validate it against the project's published schema."""
    client = _connection(config).client()
    frame = wap.read_parquet(client, staged.repository, staged.commit_id, staged.path)
    report = validate_batch(frame, project_schemas(project).published, f"{staged.branch}@{staged.commit_id[:12]}",
                            sensitive=set(project.pii_columns), label=project.label.column)
    if report.passed and len(frame) != staged.rows:
        raise DataValidationError(f"audit: {staged.path} holds {len(frame)} rows, {staged.rows} were written")
    return report


@task(retries=3, retry_delay_seconds=LAKEFS_RETRY_DELAYS, retry_condition_fn=_unreachable, cache_policy=NO_CACHE)
def publish_batch(config: DataConfig, staged: wap.StagedBatch, source: str, batch_id: str, project: Project) -> str:
    """Merge the audited batch into the published branch atomically and announce it."""
    client = _connection(config).client()
    commit_id = wap.publish(client, staged, config.branch, _metadata(source, batch_id, project))
    emit_event(
        event=DATA_PUBLISHED, id=event_id(lakefs_key(config.repository, commit_id)),
        resource=data_resource(config.repository, config.branch, project.name),
        payload={"commit_id": commit_id, "batch_id": batch_id, "rows": staged.rows, "source": source,
                 "path": staged.path, "content_sha256": staged.content_sha256},
    )
    return commit_id


@task(retries=3, retry_delay_seconds=LAKEFS_RETRY_DELAYS, retry_condition_fn=_unreachable, cache_policy=NO_CACHE)
def quarantine_batch(config: DataConfig, batch_id: str, frame: pd.DataFrame | None, source: str,
                     report: ValidationReport, project: Project) -> str:
    """Keep the failed batch (PII pseudonymised) and its report on `quarantine-<batch>`."""
    client = _connection(config).client()
    return wap.quarantine(client, config.repository, config.branch, batch_id, frame,
                          wap.data_path(config.prefix, batch_id), report, _metadata(source, batch_id, project))


@task(retries=3, retry_delay_seconds=LAKEFS_RETRY_DELAYS, retry_condition_fn=_unreachable, cache_policy=NO_CACHE)
def pull(config: DataConfig, ref: str | None, project: Project) -> tuple[str, pd.DataFrame]:
    """Read the dataset at any ref (branch, tag or commit): returns (commit id, frame validated against the
    project's published schema). The stages of a retrain (training, compression, the deploy gate) pull
    the same commit: the first downloads its parquet parts from lakeFS, the others read them from the
    cache under the state dir (keyed by the commit id, so never stale).

    The ref is resolved to a commit id first and the data is read at that commit, so the frame and
    the id always match even if the branch moves meanwhile. Later stages pin this commit id.
    """
    client = _connection(config).client()
    commit_id = wap.resolve_commit(client, config.repository, ref or config.branch)
    frame = wap.read_dataset(client, config.repository, commit_id, config.prefix, cache=Path(state_path("cache")))
    report = validate_batch(frame, project_schemas(project).published, f"{config.repository}@{commit_id[:12]}",
                            sensitive=set(project.pii_columns), label=project.label.column)
    if not report.passed:
        raise DataValidationError(report.summary(), commit_id=commit_id)
    return commit_id, frame

