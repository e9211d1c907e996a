"""Projects: a team's dataset, schema, task, features, PII, model and metrics, declared in `lakeloop.yaml`.

The project model and its loader need only the base install; the schema helpers need pandas and
pandera (the `pipeline` extra) and are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

from lakeloop.project._load import PROJECT_FILE, load_project, project_file, resolve_project
from lakeloop.project._model import (
    DEFAULT_METRIC,
    METRICS,
    NAME_RE,
    PII,
    Feature,
    Label,
    Metrics,
    ModelSpec,
    Project,
)

_LAZY = {"ProjectSchemas": "_schema", "project_schemas": "_schema", "load_schema": "_schema",
         "data_problems": "_schema", "import_object": "_schema", "PSEUDONYM_RE": "_schema",
         "project_documents": "_schema", "project_module": "_schema"}

__all__ = ["DEFAULT_METRIC", "METRICS", "NAME_RE", "PII", "PROJECT_FILE", "PSEUDONYM_RE", "Feature", "Label", "Metrics",
           "ModelSpec", "Project", "ProjectSchemas", "data_problems", "import_object", "load_project", "load_schema",
           "project_documents", "project_file", "project_module", "project_schemas", "resolve_project"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"lakeloop.project.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
