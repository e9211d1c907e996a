"""A project's pandera schema: loaded from a DataFrameModel or pandera's YAML, checked against the
project, and the published variant derived from the PII treatments."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.dtypes as pdt
import pandera.pandas as pa

from lakeloop.errors import ProjectError
from lakeloop.project._model import Path_, Project

PSEUDONYM_RE = r"^pii_[0-9a-f]{32}$"


@dataclass(frozen=True)
class ProjectSchemas:
    """What a batch must look like when it arrives (`raw`) and what the published branch holds."""

    raw: pa.DataFrameSchema
    published: pa.DataFrameSchema


@contextmanager
def project_imports(project: Project):
    """Modules named in the project (schema classes, model plug-ins) import from the project's folder."""
    root = project._root
    added = bool(root) and root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        yield
    finally:
        if added and root in sys.path:
            sys.path.remove(root)


def import_object(reference: str, what: str, project: Project) -> Any:
    """`package.module:attribute`, imported with the project's folder on the path."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ProjectError(f"{what} {reference!r}: expected `package.module:name`", problems=[])
    with project_imports(project):
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a plug-in's own import error is the user's to see, by type and first line
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise ProjectError(f"{what} {reference!r}: cannot import {module_name} ({detail}); it must be importable "
                               f"from {project._root or 'the working directory'} or the environment",
                               problems=[]) from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ProjectError(f"{what} {reference!r}: module {module_name} has no {attribute!r}", problems=[]) from None


def project_module(project: Project, name: str) -> Any:
    """The module `name.py` of the project's folder (e.g. an example's `generate.py`), imported under a
    name of its own so that two projects' modules of the same name never shadow each other.

    Raises:
        ProjectError: the project has no such file, or it fails to import.
    """
    path = Path(project._root or ".") / f"{name}.py"
    if not path.is_file():
        raise ProjectError(f"project {project.name!r} has no {path.name} in {path.parent}", problems=[])
    key = f"lakeloop_project_{project.name.replace('-', '_')}_{name}"
    if key in sys.modules and getattr(sys.modules[key], "__file__", None) == str(path):
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # before running it, as `import` does (dataclasses look their module up)
    with project_imports(project):
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[key]
            raise ProjectError(f"{path}: cannot import it ({type(exc).__name__}: {exc})", problems=[]) from exc
    return module


def project_documents(project: Project) -> dict[str, dict[str, str]]:
    """The project file and the schema's source as declared (the YAML file, or the module defining the
    DataFrameModel), each with its sha256: what a model version and a published batch were made under."""
    ref = project.schema_ref
    if ref.endswith((".yaml", ".yml")):
        schema_name, schema_text = ref, (Path(project._root or ".") / ref).read_text()
    else:
        module = ref.partition(":")[0]
        with project_imports(project):
            source = inspect.getsourcefile(importlib.import_module(module)) or ""
        schema_name, schema_text = Path(source).name, Path(source).read_text()
    documents = {"project": ("lakeloop.yaml", project._source), "schema": (schema_name, schema_text)}
    return {kind: {"name": name, "text": text, "sha256": hashlib.sha256(text.encode()).hexdigest()}
            for kind, (name, text) in documents.items()}


def load_schema(project: Project) -> pa.DataFrameSchema:
    """The raw schema the project names: a DataFrameModel by dotted path, or a pandera YAML file."""
    ref = project.schema_ref
    if ref.endswith((".yaml", ".yml")):
        path = Path(project._root or ".") / ref
        if not path.is_file():
            raise ProjectError(f"schema {ref!r}: no such file {path}", problems=[])
        try:
            schema = pa.DataFrameSchema.from_yaml(path)
        except Exception as exc:  # pandera raises many kinds here (YAML, dtype, check names)
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ProjectError(f"schema {path}: pandera cannot read it ({detail}); write it with "
                               "`schema.to_yaml()` or `lakeloop init`", problems=[]) from exc
    else:
        model = import_object(ref, "schema", project)
        if isinstance(model, pa.DataFrameSchema):
            schema = model
        elif isinstance(model, type) and issubclass(model, pa.DataFrameModel):
            schema = model.to_schema()
        else:
            raise ProjectError(f"schema {ref!r} is a {type(model).__name__}, not a pandera DataFrameModel or "
                               "DataFrameSchema", problems=[])
    return schema


def project_schemas(project: Project) -> ProjectSchemas:
    """The raw schema and the published one (pseudonymised PII as keyed hashes, dropped PII gone).

    Raises:
        ProjectError: the schema cannot be loaded or does not fit the project.
    """
    raw = load_schema(project)
    problems = [message for _, message in schema_problems(project, raw)]
    if problems:
        head = f"{project.schema_ref}: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        raise ProjectError(head, problems=problems)
    pii = project.pii_columns
    gone = [c for c, treatment in pii.items() if treatment in ("drop", "pseudonymise")]
    published = raw.remove_columns(gone)
    published = published.add_columns({
        c: pa.Column(str, pa.Check.str_matches(PSEUDONYM_RE), nullable=raw.columns[c].nullable, name=c)
        for c, treatment in pii.items() if treatment == "pseudonymise"})
    published.name = f"{project.name} (published)"
    raw.name = raw.name or f"{project.name} (raw)"
    return ProjectSchemas(raw=raw, published=published)


def _kind(dtype: Any) -> str:
    if dtype is None:
        return "any"
    if pdt.is_bool(dtype):
        return "boolean"
    if pdt.is_numeric(dtype):
        return "number"
    if pdt.is_string(dtype) or pdt.is_category(dtype) or str(dtype) in ("object", "str"):
        return "text"
    if pdt.is_datetime(dtype):
        return "datetime"
    return str(dtype)


_FITS = {"number": {"number", "boolean", "any"}, "boolean": {"boolean", "number", "any"},
         "category": {"text", "number", "boolean", "any"}}


def schema_problems(project: Project, schema: pa.DataFrameSchema) -> list[tuple[Path_, str]]:
    """Columns the project names that the schema lacks, and features whose declared type the column cannot hold."""
    columns, found = schema.columns, []
    listed = ", ".join(columns) or "none"

    def missing(path: Path_, column: str, role: str) -> None:
        found.append((path, f"{role} column {column!r} is not in the schema (its columns: {listed})"))

    if project.label.column not in columns:
        missing(("label", "column"), project.label.column, "label")
    elif project.task == "regression" and _kind(columns[project.label.column].dtype) not in ("number", "any"):
        found.append((("label", "task"), f"regression label {project.label.column!r} is "
                                         f"{columns[project.label.column].dtype} in the schema; a regression label "
                                         "is a number (use task: multiclass or binary for classes)"))
    if project.id is not None and project.id not in columns:
        missing(("id",), project.id, "id")
    for i, feature in enumerate(project.features):
        if feature.name not in columns:
            missing(("features", i, "name"), feature.name, "feature")
            continue
        kind = _kind(columns[feature.name].dtype)
        if kind not in _FITS[feature.type]:
            better = "category" if kind == "text" else "number" if kind == "number" else "a derived number"
            found.append((("features", i, "type"), f"feature {feature.name!r} is declared {feature.type} but the "
                                                   f"schema types it {columns[feature.name].dtype}; declare it type: "
                                                   f"{better}"))
    for i, entry in enumerate(project.pii):
        if entry.column not in columns:
            missing(("pii", i, "column"), entry.column, "PII")
    return found


def data_problems(project: Project, frame: pd.DataFrame, source: str) -> list[str]:
    """What in a frame contradicts the project (beyond its schema): the label's classes, the id's uniqueness,
    the features' types. Each message names the column, the values and what to do."""
    found: list[str] = []
    label = project.label
    if label.column not in frame:
        columns = ", ".join(map(str, frame.columns))
        return [f"{source}: the label column {label.column!r} is missing (columns: {columns})"]
    values = frame[label.column].dropna()
    distinct = sorted(values.astype(str).unique())
    shown = ", ".join(distinct[:8]) + (" …" if len(distinct) > 8 else "")
    if label.task == "binary":
        if len(distinct) != 2:
            found.append(f"{source}: a binary label needs two classes; {label.column!r} has {len(distinct)} "
                         f"({shown}); use task: multiclass for more, or fix the data")
        elif str(label.positive_class) not in distinct:
            found.append(f"{source}: positive_class {label.positive_class!r} does not occur in {label.column!r} "
                         f"(values {shown})")
    elif label.task == "multiclass":
        declared = set(map(str, label.classes or []))
        undeclared = [v for v in distinct if v not in declared]
        if undeclared:
            found.append(f"{source}: {label.column!r} has class(es) {', '.join(undeclared[:8])} not declared in "
                         "label.classes; add them (at the end, to keep output order) or fix the data")
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        bad = values[numbers.isna()]
        if len(bad):
            found.append(f"{source}: regression label {label.column!r} has {len(bad)} non-numeric value(s) "
                         f"(e.g. {', '.join(map(repr, bad.astype(str).unique()[:3]))}); a regression label is a number")
        elif label.transform == "log1p" and (numbers <= -1).any():
            found.append(f"{source}: transform log1p needs {label.column!r} > -1; it has {numbers.min()}")
    if project.id is not None and project.id in frame:
        dupes = frame[project.id][frame[project.id].duplicated()]
        if len(dupes):
            found.append(f"{source}: the id column {project.id!r} is not unique ({len(dupes)} repeated value(s), e.g. "
                         f"{dupes.astype(str).iloc[0]!r}); the split hashes it, so each row needs its own id")
    for feature in project.features:
        if feature.name not in frame or feature.type == "category":
            continue
        column = frame[feature.name]
        if feature.type == "boolean":
            as_bool = column.dropna().astype(str).str.lower()
            bad = as_bool[~as_bool.isin(["true", "false", "0", "1", "1.0", "0.0", "yes", "no"])]
        else:
            bad = column.dropna()[pd.to_numeric(column.dropna(), errors="coerce").isna()]
        if len(bad):
            found.append(f"{source}: feature {feature.name!r} is declared {feature.type} but holds "
                         f"{', '.join(map(repr, bad.astype(str).unique()[:3]))}; declare it type: category or fix "
                         "the data")
    return found
