"""Data access: lakeFS (official `lakefs` SDK), batch files, validation reports, write-audit-publish."""

from lakeloop.data._batch import BATCH_FORMATS, read_batch
from lakeloop.data._lakefs import lakefs_client, lakefs_errors, upload_stream
from lakeloop.data._validate import ValidationReport, pseudonymise, validate_batch
from lakeloop.data._wap import upload_frame

__all__ = ["BATCH_FORMATS", "ValidationReport", "lakefs_client", "lakefs_errors", "pseudonymise", "read_batch",
           "upload_frame", "upload_stream", "validate_batch"]
