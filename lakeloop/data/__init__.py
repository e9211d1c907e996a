"""Data access: lakeFS (official `lakefs` SDK), batch files, validation reports, write-audit-publish."""

from lakeloop.data._batch import BATCH_FORMATS, read_batch, to_parquet_bytes
from lakeloop.data._lakefs import lakefs_client, lakefs_errors
from lakeloop.data._validate import ValidationReport, pseudonymise, validate_batch

__all__ = ["BATCH_FORMATS", "ValidationReport", "lakefs_client", "lakefs_errors", "pseudonymise",
           "read_batch", "to_parquet_bytes", "validate_batch"]
