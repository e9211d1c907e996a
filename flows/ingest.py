"""`ingest-data`: write-audit-publish of one batch into the lakeFS data repository."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel

from lakeloop.config import DataConfig
from lakeloop.data import ValidationReport
from lakeloop.data._wap import batch_id_of
from lakeloop.errors import DataValidationError
from lakeloop.project import resolve_project
from tasks.data import (
    audit_batch,
    check_published,
    load_batch,
    pseudonymise_batch,
    publish_batch,
    quarantine_batch,
    stage_batch,
    validate_raw,
)


class IngestResult(BaseModel):
    batch_id: str
    commit_id: str
    rows: int
    already_published: bool = False


@flow(name="ingest-data", log_prints=True)
def ingest_data(source: str, project: str, data: DataConfig | None = None) -> IngestResult:
    """Validate a parquet/CSV batch, pseudonymise its PII and publish it to lakeFS `main` atomically.

    On any validation failure nothing reaches `main`: the batch and its report are kept on
    `quarantine-<batch>` and the flow fails with one line saying what was wrong.
    """
    spec = resolve_project(project)
    data = data or spec.data
    logger = get_run_logger()
    batch_id = batch_id_of(source)
    published = check_published(data, batch_id)
    if published:
        logger.info("batch %s is already published on %s@%s", batch_id, data.branch, published[:12])
        return IngestResult(batch_id=batch_id, commit_id=published, rows=0, already_published=True)
    try:
        frame = load_batch(source)
    except DataValidationError as exc:
        report = ValidationReport.unreadable(source, str(exc))
        branch = quarantine_batch(data, batch_id, None, source, report, spec)
        raise _quarantined(report, data, branch, batch_id) from exc
    report = validate_raw(frame, source, spec)
    safe = pseudonymise_batch(frame, data, spec)
    if not report.passed:
        branch = quarantine_batch(data, batch_id, safe, source, report, spec)
        raise _quarantined(report, data, branch, batch_id)
    staged = stage_batch(data, batch_id, safe, source, report, spec)
    audit = audit_batch(data, staged, spec)
    if not audit.passed:
        branch = quarantine_batch(data, batch_id, safe, source, audit, spec)
        raise _quarantined(audit, data, branch, batch_id)
    commit_id = publish_batch(data, staged, source, batch_id, spec)
    logger.info("published %d rows of batch %s to %s/%s at %s", staged.rows, batch_id, data.repository,
                data.branch, commit_id[:12])
    return IngestResult(batch_id=batch_id, commit_id=commit_id, rows=staged.rows)


def _quarantined(report: ValidationReport, data: DataConfig, branch: str, batch_id: str) -> DataValidationError:
    return DataValidationError(f"{report.summary()}; report on lakeFS branch {data.repository}/{branch}",
                               batch_id=batch_id, branch=branch, rows=report.rows,
                               problems=[f.describe() for f in report.failures])
