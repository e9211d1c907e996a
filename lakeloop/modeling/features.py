"""A project's features and label as the model sees them: fitted on the training split, encoded the same
way in training, in the ONNX graph and in drift monitoring.

Numbers: clip (if declared), log1p (if declared), missing values imputed from the training split
(median by default) with a missing indicator, standard scaling. Booleans: 0/1, missing imputed and
indicated like numbers. Categories: index 0 for values never seen in training, 1 for missing (empty
string or null), 2.. for the training vocabulary (sorted). Labels: binary 0/1 (1 = the positive
class), multiclass the index in the declared class list, regression the (optionally log1p) value
standardised with training statistics; the export undoes the standardisation and the transform.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from lakeloop.errors import DataValidationError
from lakeloop.project import Project

UNKNOWN = 0  # category index of values never seen in training
MISSING = 1  # category index of missing values (null or empty string)
SPLIT_KEY = "0123456789abcdef"  # fixed: a row's split must never change between data versions
_TRUE = {"true", "1", "1.0", "yes", "y", "t"}
_FALSE = {"false", "0", "0.0", "no", "n", "f"}


@dataclass(frozen=True)
class NumberFeature:
    name: str
    log1p: bool
    clip: tuple[float, float] | None
    fill: float  # the imputed value, on the transformed scale
    mean: float
    std: float
    indicator: bool  # a 0/1 "was missing" input follows the value
    boolean: bool = False


@dataclass(frozen=True)
class CategoryFeature:
    name: str
    vocabulary: tuple[str, ...]  # index i + 2 for vocabulary[i]

    @property
    def cardinality(self) -> int:
        return len(self.vocabulary) + 2


@dataclass(frozen=True)
class LabelSpec:
    column: str
    task: str
    classes: tuple[str, ...] = ()  # binary: (negative, positive); multiclass: declared order
    transform: str = "none"
    mean: float = 0.0  # regression: of the transformed training labels
    std: float = 1.0

    @property
    def outputs(self) -> int:
        """Width of the net's raw output: one logit (binary), one per class, one value (regression)."""
        return len(self.classes) if self.task == "multiclass" else 1


@dataclass(frozen=True)
class FeatureSpec:
    """Everything fitted on the training split that training, export, serving checks and drift share."""

    numbers: tuple[NumberFeature, ...]
    categories: tuple[CategoryFeature, ...]
    label: LabelSpec
    id_column: str | None = None
    extra: dict = field(default_factory=dict)

    # -- fitting ---------------------------------------------------------------------------------

    @classmethod
    def fit(cls, project: Project, train: pd.DataFrame, nullable: frozenset[str] = frozenset()) -> FeatureSpec:
        """Fit on the training split. Numbers in `nullable` (the schema allows them missing) get a missing
        indicator even when the training rows have no gap, so a later gap is a known input."""
        numbers, categories = [], []
        for feature in project.features:
            column = train[feature.name]
            if feature.type == "category":
                values = category_strings(column)
                vocabulary = tuple(sorted(v for v in set(values.tolist()) if v != ""))
                categories.append(CategoryFeature(feature.name, vocabulary))
                continue
            boolean = feature.type == "boolean"
            raw = boolean_values(column, feature.name) if boolean else _floats(column, feature.name)
            clip = tuple(feature.clip) if feature.clip else None
            transformed = _transform(raw, clip, feature.log1p)
            present = transformed[~np.isnan(transformed)]
            if present.size == 0:
                raise DataValidationError(f"feature {feature.name!r} is empty in every training row: nothing to "
                                          "learn from; remove it from features or ingest data that has it",
                                          column=feature.name)
            fill = {"median": float(np.median(present)), "mean": float(present.mean()), "zero": 0.0}[feature.impute]
            filled = np.where(np.isnan(transformed), fill, transformed)
            std = float(filled.std())
            numbers.append(NumberFeature(feature.name, feature.log1p, clip, fill, float(filled.mean()),
                                         std if std > 0 else 1.0,
                                         bool(np.isnan(raw).any()) or feature.name in nullable, boolean))
        label = project.label
        if label.task == "binary":
            negative = next(str_value(c) for c in (label.classes or _observed(train[label.column]))
                            if str_value(c) != str_value(label.positive_class))
            label_spec = LabelSpec(label.column, "binary", (negative, str_value(label.positive_class)))
        elif label.task == "multiclass":
            label_spec = LabelSpec(label.column, "multiclass", tuple(str_value(c) for c in label.classes))
        else:
            y = _label_floats(train[label.column], label.column)
            y = np.log1p(y) if label.transform == "log1p" else y
            std = float(y.std())
            label_spec = LabelSpec(label.column, "regression", (), label.transform, float(y.mean()),
                                   std if std > 0 else 1.0)
        return cls(tuple(numbers), tuple(categories), label_spec, project.id)

    # -- encoding --------------------------------------------------------------------------------

    @property
    def numeric_width(self) -> int:
        """Columns of the numeric matrix: each number, then its missing indicator if it has one."""
        return sum(1 + n.indicator for n in self.numbers)

    @property
    def cardinalities(self) -> list[int]:
        return [c.cardinality for c in self.categories]

    @property
    def inputs(self) -> list[str]:
        """The model's raw input columns, in graph order."""
        return [n.name for n in self.numbers] + [c.name for c in self.categories]

    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows → (scaled float32 [N, numeric_width], category indices int64 [N, categories])."""
        numeric = np.empty((len(frame), self.numeric_width), dtype=np.float64)
        i = 0
        for n in self.numbers:
            raw = boolean_values(frame[n.name], n.name) if n.boolean else _floats(frame[n.name], n.name)
            transformed = _transform(raw, n.clip, n.log1p)
            missing = np.isnan(transformed)
            numeric[:, i] = (np.where(missing, n.fill, transformed) - n.mean) / n.std
            i += 1
            if n.indicator:
                numeric[:, i] = missing
                i += 1
        codes = np.empty((len(frame), len(self.categories)), dtype=np.int64)
        for j, c in enumerate(self.categories):
            codes[:, j] = lookup(category_strings(frame[c.name]).to_numpy(), c.vocabulary)
        return numeric.astype(np.float32), codes

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        """Training targets: float32 0/1 (binary), int64 class index (multiclass), float32 standardised value."""
        column, label = frame[self.label.column], self.label
        if label.task == "regression":
            y = _label_floats(column, label.column)
            y = np.log1p(y) if label.transform == "log1p" else y
            return ((y - label.mean) / label.std).astype(np.float32)
        values = category_strings(column).to_numpy()
        index = pd.Index(label.classes).get_indexer(values)
        if (index < 0).any():
            bad = sorted(set(values[index < 0].tolist()))[:5]
            raise DataValidationError(f"label {label.column!r} has value(s) {', '.join(map(repr, bad))} outside the "
                                      f"declared classes {list(label.classes)}; declare them in label.classes or "
                                      "fix the data", column=label.column)
        return index.astype(np.float32 if label.task == "binary" else np.int64)

    def targets(self, frame: pd.DataFrame) -> np.ndarray:
        """The label as the served model's primary output compares with it: 0/1, class index, or the value."""
        if self.label.task == "regression":
            return _label_floats(frame[self.label.column], self.label.column)
        return self.labels(frame).astype(np.int64)

    def outputs_of(self, raw: np.ndarray) -> np.ndarray:
        """The primary output from the net's raw output, in numpy, as the exported graph computes it: the
        positive-class probability [N], class probabilities [N, C], or the prediction [N] in label units."""
        raw = np.asarray(raw, dtype=np.float64)
        if self.label.task == "binary":
            return 1 / (1 + np.exp(-raw[:, 0]))
        if self.label.task == "multiclass":
            shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        value = raw[:, 0] * self.label.std + self.label.mean
        return np.expm1(value) if self.label.transform == "log1p" else value

    # -- storage ---------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        return cls(numbers=tuple(NumberFeature(**{**n, "clip": tuple(n["clip"]) if n["clip"] else None})
                                 for n in raw["numbers"]),
                   categories=tuple(CategoryFeature(c["name"], tuple(c["vocabulary"])) for c in raw["categories"]),
                   label=LabelSpec(**{**raw["label"], "classes": tuple(raw["label"]["classes"])}),
                   id_column=raw.get("id_column"), extra=raw.get("extra", {}))


def str_value(value: object) -> str:
    """A label or category value as one canonical string (3, 3.0 and "3" agree; True is "true")."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def category_strings(column: pd.Series) -> pd.Series:
    """Canonical strings of a category column: missing → "", integral floats without ".0", booleans lower-case."""
    if pd.api.types.is_bool_dtype(column):
        return column.map({True: "true", False: "false"}).fillna("").astype(str)
    if pd.api.types.is_float_dtype(column):
        integral = column.dropna()
        if len(integral) and bool(np.all(np.mod(integral.to_numpy(), 1) == 0)):
            return column.map(lambda v: "" if pd.isna(v) else str(int(v))).astype(str)
    if pd.api.types.is_numeric_dtype(column):
        return column.map(lambda v: "" if pd.isna(v) else str(v)).astype(str)
    return column.astype(object).where(column.notna(), "").astype(str)


def lookup(values: np.ndarray, vocabulary: tuple[str, ...]) -> np.ndarray:
    codes = pd.Index(vocabulary).get_indexer(values)
    return np.where(codes >= 0, codes + 2, np.where(values == "", MISSING, UNKNOWN))


def boolean_values(column: pd.Series, name: str) -> np.ndarray:
    """1.0 / 0.0 / NaN from booleans, 0/1 numbers or true/false/yes/no text."""
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        values = column.astype("float64").to_numpy()
        bad = ~np.isnan(values) & ~np.isin(values, (0.0, 1.0))
    else:
        text = column.astype(object).where(column.notna(), None).map(lambda v: None if v is None else str(v).lower())
        values = np.array([np.nan if v is None or v == "" else 1.0 if v in _TRUE else 0.0 if v in _FALSE else -1.0
                           for v in text], dtype=np.float64)
        bad = values == -1.0
    if bad.any():
        example = column[bad].iloc[0]
        raise DataValidationError(f"boolean feature {name!r} holds {example!r}: expected true/false, 1/0 or yes/no",
                                  column=name)
    return values


def _floats(column: pd.Series, name: str) -> np.ndarray:
    try:
        return column.astype("float64").to_numpy()
    except (TypeError, ValueError):
        numbers = pd.to_numeric(column, errors="coerce")
        bad = column[numbers.isna() & column.notna()]
        raise DataValidationError(f"number feature {name!r} holds {bad.iloc[0]!r} (and {len(bad) - 1} more non-numbers)"
                                  "; declare it type: category or fix the data", column=name) from None


def _label_floats(column: pd.Series, name: str) -> np.ndarray:
    values = _floats(column, name)
    if np.isnan(values).any():
        raise DataValidationError(f"label {name!r} is empty in {int(np.isnan(values).sum())} row(s): lakeloop trains "
                                  "on labelled rows only", column=name)
    return values


def _transform(raw: np.ndarray, clip: tuple[float, float] | None, log1p: bool) -> np.ndarray:
    out = np.clip(raw, clip[0], clip[1]) if clip else raw
    if log1p:
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.log1p(np.maximum(out, 0.0))  # log1p is declared for non-negative values
    return out


def _observed(column: pd.Series) -> list[str]:
    return sorted(set(category_strings(column).tolist()) - {""})


def split_of(frame: pd.DataFrame, id_column: str | None, test: float = 0.2, val: float = 0.1) -> np.ndarray:
    """'train', 'val' or 'test' per row from a keyed hash of the id column (or, without one, of the whole row)."""
    if id_column is not None:
        hashed = pd.util.hash_array(frame[id_column].astype(str).to_numpy(dtype=object), hash_key=SPLIT_KEY)
    else:
        hashed = pd.util.hash_pandas_object(frame[sorted(frame.columns)], index=False, hash_key=SPLIT_KEY).to_numpy()
    bucket = hashed % 10_000
    return np.where(bucket < test * 10_000, "test", np.where(bucket < (test + val) * 10_000, "val", "train"))
