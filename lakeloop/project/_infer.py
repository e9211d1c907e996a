"""`lakeloop init`: a project file and a pandera schema inferred from a sample of the data.

pandera's `infer_schema` gives the dtypes and observed ranges; they are then loosened so that the
next batch from the same source passes: numeric ranges get headroom (and keep their sign), category
columns accept the categories seen, nullability follows the data. The task follows AutoGluon's
rules: a label with two values is binary; text or few integer values is multiclass; else regression.
Every decision is returned with its reason, so the CLI can print what it decided and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa

from lakeloop.errors import ProjectError

MULTICLASS_MAX_INTEGERS = 20  # an integer label with at most this many values (and few per row) is classes
CATEGORY_MAX = 100  # text columns with more distinct values are identifiers or free text, not categories
HEADROOM = 0.5  # numeric ranges widen by half their span on each side
_PII_NAMES = {
    "email": re.compile(r"e_?mail", re.I), "phone": re.compile(r"phone|mobile|msisdn|tel(ephone)?\b", re.I),
    "card": re.compile(r"card_?(number|no|num)|\bpan\b|credit_?card|iban", re.I),
    "name": re.compile(r"^(first|last|full|given|family|sur)?_?name$|^customer_name$|^surname$", re.I),
    "national id": re.compile(r"\bssn\b|passport|national_?id|emirates_?id", re.I),
    "address": re.compile(r"street|address|postcode|zip_?code", re.I),
}
_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
_CONTENT = {"email": re.compile(rf"^{_EMAIL}$"), "card": re.compile(r"^(?:\d[ -]?){13,19}$"),
            "phone": re.compile(r"^\+?[\d ()-]{7,16}$")}
_FREE_TEXT_PII = re.compile(rf"{_EMAIL}|\b(?:\d[ -]?){{13,19}}\b")


@dataclass
class Decision:
    column: str
    role: str  # label, id, feature (type), PII (treatment), skipped
    why: str


@dataclass
class Inferred:
    project: dict  # the lakeloop.yaml content
    schema: pa.DataFrameSchema
    decisions: list[Decision]


def infer_project(frame: pd.DataFrame, label: str, name: str, task: str = "auto", id_column: str | None = None,
                  source: str = "the data") -> Inferred:
    """A project (as a dict) and a schema for `frame`, with the reason for every decision.

    Raises:
        ProjectError: the label or id column is missing, or the data cannot hold the asked-for task.
    """
    if frame.empty:
        raise ProjectError(f"{source} has no rows: lakeloop init infers the schema from a sample of the data",
                           problems=[])
    for column, what in ((label, "--label"), (id_column, "--id")):
        if column is not None and column not in frame:
            raise ProjectError(f"{what} {column!r} is not a column of {source} (columns: "
                               f"{', '.join(map(str, frame.columns))})", problems=[])
    decisions: list[Decision] = []
    label_section, why = _label(frame[label], task, source)
    decisions.append(Decision(label, f"label ({label_section['task']})", why))
    if id_column is None:
        id_column = _guess_id(frame, exclude={label})
        if id_column is not None:
            decisions.append(Decision(id_column, "id", "unique in every row and named like an id: its keyed hash "
                                                       "fixes each row's split (pass --id to choose another)"))
    else:
        if frame[id_column].duplicated().any():
            raise ProjectError(f"--id {id_column!r} is not unique in {source} "
                               f"({int(frame[id_column].duplicated().sum())} repeated values): the split hashes it, "
                               "so each row needs its own id", problems=[])
        decisions.append(Decision(id_column, "id", "given with --id: its keyed hash fixes each row's split"))
    features, pii = [], []
    for column in frame.columns:
        if column in (label, id_column):
            continue
        kind, treatment = _pii_kind(column, frame[column])
        if kind is not None:
            pii.append({"column": column, "treatment": treatment})
            decisions.append(Decision(column, f"PII ({treatment})", f"looks like {kind}; not a feature"))
            continue
        feature, why = _feature(column, frame[column])
        if feature is None:
            decisions.append(Decision(column, "skipped", why))
        else:
            features.append(feature)
            decisions.append(Decision(column, f"feature ({feature['type']})", why))
    if not features:
        raise ProjectError(f"{source}: no column besides the label, the id and PII can be a feature", problems=[])
    if id_column is None:
        decisions.append(Decision("(all columns)", "split", "no id column: each row's split is a keyed hash of all "
                                                            "its values, so a corrected row may change split; pass "
                                                            "--id COLUMN if the data has a stable row id"))
    project = {"name": name, "description": f"inferred by lakeloop init from {source}",
               "data": {"repository": f"{name}-data", "branch": "main", "prefix": name},
               "schema": "schema.yaml", **({"id": id_column} if id_column else {}), "label": label_section,
               "features": features, "pii": pii, "training": {"epochs": 20}}
    return Inferred(project=project, schema=_schema(frame, label_section, features, id_column, pii),
                    decisions=decisions)


def _label(values: pd.Series, task: str, source: str) -> tuple[dict, str]:
    present = values.dropna()
    distinct = present.unique()
    if len(present) < len(values):
        raise ProjectError(f"label {values.name!r} is empty in {len(values) - len(present)} row(s) of {source}: "
                           "lakeloop trains on labelled rows only; drop or fill them first", problems=[])
    numeric = pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present)
    integral = numeric and bool(np.all(np.mod(present.to_numpy(dtype=float), 1) == 0))
    if task == "auto":
        if len(distinct) == 2:
            task, why = "binary", "two distinct values"
        elif not numeric:
            task, why = "multiclass", f"text with {len(distinct)} distinct values"
        elif integral and len(distinct) <= MULTICLASS_MAX_INTEGERS and len(distinct) <= len(present) / 5:
            task, why = "multiclass", f"{len(distinct)} integer values"
        else:
            task, why = "regression", f"numbers with {len(distinct)} distinct values"
        why = f"task auto: {why} (pass --task to choose)"
    else:
        why = "given with --task"
    classes = sorted(distinct.tolist(), key=lambda v: (str(type(v)), v))
    classes = [c.item() if hasattr(c, "item") else c for c in classes]
    if task == "binary":
        if len(distinct) != 2:
            raise ProjectError(f"--task binary: label {values.name!r} has {len(distinct)} values in {source}, a binary "
                               "label has two (use --task multiclass)", problems=[])
        counts = present.value_counts()
        positive = counts.index[-1] if counts.iloc[0] != counts.iloc[-1] else classes[-1]  # the rarer class
        positive = positive.item() if hasattr(positive, "item") else positive
        return {"column": values.name, "task": task, "positive_class": positive, "classes": classes}, (
            f"{why}; positive class {positive!r}, the rarer one (edit positive_class to change)")
    if task == "multiclass":
        if len(distinct) < 3:
            raise ProjectError(f"--task multiclass: label {values.name!r} has {len(distinct)} value(s) in {source}; "
                               "two values are --task binary", problems=[])
        return {"column": values.name, "task": task, "classes": classes}, f"{why}; classes in sorted order, pinned"
    if not numeric:
        raise ProjectError(f"--task regression: label {values.name!r} holds text in {source} (e.g. "
                           f"{str(present.iloc[0])!r}); a regression label is a number", problems=[])
    skewed = present.min() >= 0 and _skew(present) > 2
    section = {"column": values.name, "task": task, **({"transform": "log1p"} if skewed else {})}
    return section, why + ("; log1p target transform (non-negative and skewed)" if skewed else "")


def _skew(values: pd.Series) -> float:
    v = values.to_numpy(dtype=float)
    std = v.std()
    return float(np.mean(((v - v.mean()) / std) ** 3)) if std > 0 else 0.0


def _guess_id(frame: pd.DataFrame, exclude: set[str]) -> str | None:
    for column in frame.columns:
        if column in exclude or not re.search(r"(^|_)(id|uuid|key)$", str(column), re.I):
            continue
        if frame[column].notna().all() and not frame[column].duplicated().any():
            return column
    return None


def _pii_kind(column: str, values: pd.Series) -> tuple[str | None, str]:
    text = values.dropna()
    is_text = not pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if is_text and len(text):
        sample = text.astype(str).head(500)
        for kind, pattern in _CONTENT.items():
            if sample.str.match(pattern).mean() > 0.8 and (kind != "phone" or sample.str.count(r"\d").min() >= 7):
                return kind, "pseudonymise"
        if sample.str.len().mean() > 20 and sample.str.contains(_FREE_TEXT_PII).any():
            return "free text with e-mail addresses or card numbers", "redact"
    for kind, pattern in _PII_NAMES.items():
        if pattern.search(str(column)):
            return f"{kind} (by its name)", "pseudonymise"
    return None, ""


def _feature(column: str, values: pd.Series) -> tuple[dict | None, str]:
    present = values.dropna()
    missing = f"; {len(values) - len(present)} missing value(s) handled in the model" if len(present) < len(values) \
        else ""
    if present.empty:
        return None, "empty in every row"
    if pd.api.types.is_datetime64_any_dtype(values):
        return None, "a date/time: derive numbers from it (age, hour, weekday) before ingesting"
    if pd.api.types.is_bool_dtype(present) or set(present.astype(str).str.lower().unique()) <= {"true", "false"}:
        return {"name": column, "type": "boolean"}, "true/false values" + missing
    if pd.api.types.is_numeric_dtype(present):
        if present.nunique() == 1:
            return None, f"constant ({present.iloc[0]!r}): carries no signal"
        feature: dict = {"name": column, "type": "number"}
        why = f"numbers from {present.min():.4g} to {present.max():.4g}"
        if present.min() >= 0 and _skew(present) > 2:
            feature["log1p"] = True
            why += "; log1p (non-negative and heavy-tailed)"
        return feature, why + missing
    distinct = present.astype(str).nunique()
    if _looks_like_dates(present):
        return None, "dates/times as text: derive numbers from them (age, hour, weekday) before ingesting"
    if distinct > CATEGORY_MAX or distinct > 0.5 * len(present):
        return None, f"text with {distinct} distinct values: an identifier or free text, not a category"
    if distinct == 1:
        return None, f"constant ({present.iloc[0]!r}): carries no signal"
    return {"name": column, "type": "category"}, f"text with {distinct} categories" + missing


def _looks_like_dates(text: pd.Series) -> bool:
    sample = text.astype(str).head(200)
    if not sample.str.contains(r"\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{2,4}", regex=True).all():
        return False
    return bool(pd.to_datetime(sample, errors="coerce", format="mixed").notna().all())


def _schema(frame: pd.DataFrame, label: dict, features: list[dict], id_column: str | None,
            pii: list[dict]) -> pa.DataFrameSchema:
    inferred = pa.infer_schema(frame)
    categories = {f["name"] for f in features if f["type"] == "category"}
    columns = {}
    for name, column in inferred.columns.items():
        values = frame[name]
        present = values.dropna()
        checks = []
        if pd.api.types.is_bool_dtype(values):
            dtype = "bool"
        elif pd.api.types.is_numeric_dtype(values):
            dtype = "int64" if pd.api.types.is_integer_dtype(values) else "float64"
            if name != label["column"] and len(present):
                low, high = float(present.min()), float(present.max())
                span = (high - low) or max(abs(high), 1.0)
                lower = low - HEADROOM * span if low < 0 else max(0.0, low - HEADROOM * span)
                checks.append(pa.Check.in_range(lower, high + HEADROOM * span))
        elif pd.api.types.is_datetime64_any_dtype(values):
            dtype = str(values.dtype)
        else:
            dtype = "str"
            if name in categories:
                checks.append(pa.Check.isin(sorted(present.astype(str).unique())))
        if name == label["column"] and label["task"] != "regression":
            checks = [pa.Check.isin(label["classes"])]
        columns[name] = pa.Column(dtype, checks, nullable=bool(values.isna().any()), unique=name == id_column,
                                  name=name, description=column.description)
    del pii  # PII columns keep their inferred type; pseudonymisation is derived from the project
    return pa.DataFrameSchema(columns, strict=True, coerce=True)
