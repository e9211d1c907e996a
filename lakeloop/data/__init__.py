"""Data access: lakeFS (official `lakefs` SDK), batch files, validation reports, write-audit-publish.

The lakeFS helpers import only the SDK; the batch and validation helpers need pandas and pandera
(the `pipeline` extra). Names are imported on first use (PEP 562), so the model server, installed
from the `serve` extra alone, can use the lakeFS helpers without pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

from lakeloop.data._lakefs import lakefs_client, lakefs_errors, upload_stream

_LAZY = {"BATCH_FORMATS": "_batch", "read_batch": "_batch", "ValidationReport": "_validate",
         "pseudonymise": "_validate", "validate_batch": "_validate", "upload_frame": "_wap"}

__all__ = ["BATCH_FORMATS", "ValidationReport", "lakefs_client", "lakefs_errors", "pseudonymise", "read_batch",
           "upload_frame", "upload_stream", "validate_batch"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"lakeloop.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
