"""The project file's model: what a team declares about its dataset, task and model.

Every section is strict (an unknown key is an error). Cross-field rules that pydantic cannot place on
one field (a feature listed twice, the label used as a feature, a metric that does not fit the task)
are checked by `problems()`, which names the path of each bad value so the loader can give its line.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from lakeloop.config import CompressionConfig, DataConfig, DeployConfig, DriftConfig, TrainingConfig
from lakeloop.drift import DriftThresholds

Task = Literal["binary", "multiclass", "regression"]
FeatureType = Literal["number", "category", "boolean"]
Path_ = tuple[str | int, ...]

# Every metric lakeloop computes, per task, with its direction: gates compare in that direction.
METRICS: dict[str, dict[str, Literal["higher", "lower"]]] = {
    "binary": {"pr_auc": "higher", "roc_auc": "higher", "f1": "higher", "accuracy": "higher", "log_loss": "lower"},
    "multiclass": {"macro_f1": "higher", "accuracy": "higher", "log_loss": "lower"},
    "regression": {"rmse": "lower", "mae": "lower", "r2": "higher"},
}
DEFAULT_METRIC: dict[str, str] = {"binary": "pr_auc", "multiclass": "macro_f1", "regression": "rmse"}
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeatureDriftOverride(_Strict):
    """Per-feature drift thresholds; unset ones keep the project's `drift.thresholds`."""

    wasserstein: float | None = Field(None, gt=0, description="Numbers: Wasserstein distance / reference std.")
    psi: float | None = Field(None, gt=0, description="Numbers: population stability index.")
    js: float | None = Field(None, gt=0, description="Categories and booleans: Jensen-Shannon distance.")


class Feature(_Strict):
    """One model input: a column of the published data and how it becomes numbers.

    Missing values are valid inputs: numbers are imputed from training statistics (`impute`) and get a
    missing indicator; categories and booleans have a "missing" bucket of their own; a category never
    seen in training maps to the reserved unknown index.
    """

    name: str = Field(description="Column name in the data.")
    type: FeatureType = Field(description="number, category or boolean.")
    log1p: bool = Field(False, description="Numbers: log(1 + x) before scaling (heavy tails; needs x > -1).")
    clip: tuple[float, float] | None = Field(None, description="Numbers: [low, high] limits applied first.")
    impute: Literal["median", "mean", "zero"] = Field("median", description="Numbers: the value a missing one gets.")
    drift: FeatureDriftOverride | None = Field(None, description="Thresholds overriding the project's defaults.")


class Label(_Strict):
    """The column the model predicts and the kind of prediction."""

    column: str = Field(description="Label column in the data.")
    task: Task = Field(description="binary, multiclass or regression (pinned: retraining never changes it).")
    positive_class: str | int | bool | None = Field(None, description="Binary: the label value that is positive.")
    classes: list[str | int | bool] | None = Field(
        None, description="Multiclass: every class, in a fixed order (output i is classes[i] in every version). "
                          "Binary: optionally the two values.")
    transform: Literal["none", "log1p"] = Field(
        "none", description="Regression: train on log1p(label); predictions are in the label's own units.")


class PII(_Strict):
    """A column holding personal data, and what publishing does with it."""

    column: str = Field(description="Column name in the raw data.")
    treatment: Literal["pseudonymise", "drop", "redact"] = Field(
        description="pseudonymise: keyed hash (joins still work); drop: never published; redact: free text with "
                    "e-mail addresses and card numbers replaced by <redacted>.")


class ModelSpec(_Strict):
    """The network: the built-in tabular net, or a plug-in that returns an `nn.Module`.

    A plug-in is `package.module:function` or the name of an entry point in the group
    `lakeloop.models`; it is called as `function(spec, task, outputs, **options)` (see the docs).
    """

    plugin: str | None = Field(None, description="module:function or an entry-point name (group lakeloop.models).")
    options: dict[str, Any] = Field({}, description="Keyword arguments passed to the plug-in.")
    hidden: list[int] = Field([64, 64], min_length=1, description="Built-in net: hidden layer widths.")
    embedding_dim: int = Field(8, ge=1, description="Built-in net: width of each category embedding.")


class Metrics(_Strict):
    """The metric gates and reports compare on; its direction follows from the task."""

    primary: str | None = Field(None, description="binary: pr_auc (default), roc_auc, f1, accuracy, log_loss; "
                                                  "multiclass: macro_f1 (default), accuracy, log_loss; "
                                                  "regression: rmse (default), mae, r2.")


class Project(_Strict):
    """A `lakeloop.yaml`: the dataset, its schema, the task, the features, PII, the model and the stages."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(description="Model name: registry, serving URL /v2/models/{name}, deployments, events.")
    description: str = Field("", description="One line about the project.")
    data: DataConfig = Field(description="Where the data lives in lakeFS.")
    schema_ref: str = Field(alias="schema", description="A pandera DataFrameModel (`package.module:Class`) or a "
                                                        "pandera YAML schema file, relative to the project file.")
    id: str | None = Field(None, description="Column whose keyed hash fixes each row's split forever. Without it "
                                             "the whole row is hashed: a corrected row may change split.")
    label: Label
    features: list[Feature] = Field(min_length=1)
    pii: list[PII] = Field([], description="Personal-data columns and their treatment.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    metrics: Metrics = Field(default_factory=Metrics)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)

    _root: str = PrivateAttr("")  # the folder holding the project file: schema files and modules resolve here
    _source: str = PrivateAttr("")  # the project file's text, as read (the registry stores it)

    @property
    def task(self) -> Task:
        return self.label.task

    @property
    def primary_metric(self) -> str:
        return self.metrics.primary or DEFAULT_METRIC[self.task]

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.task][self.primary_metric] == "higher"

    @property
    def root(self) -> str:
        """The folder the project file was read from ("" for a project built in Python)."""
        return self._root

    @property
    def pii_columns(self) -> dict[str, str]:
        return {p.column: p.treatment for p in self.pii}

    def to_json(self) -> str:
        """The project with the folder it was read from (a run folder keeps it for the training processes)."""
        return json.dumps({"project": self.model_dump(mode="json", by_alias=True), "root": self._root,
                           "source": self._source})

    @classmethod
    def from_json(cls, text: str) -> Project:
        raw = json.loads(text)
        project = cls.model_validate(raw["project"])
        project._root, project._source = raw.get("root", ""), raw.get("source", "")
        return project

    def fingerprint(self) -> dict:
        """What about the project changes a trained model: its id, label, features and model."""
        return self.model_dump(mode="json", include={"id", "label", "features", "model", "pii"})

    def feature(self, name: str) -> Feature:
        return next(f for f in self.features if f.name == name)

    def feature_thresholds(self, base: DriftThresholds | None = None) -> dict[str, DriftThresholds]:
        """The features whose drift thresholds the project overrides: `base` (default: the project's
        `drift.thresholds`) with each feature's own values."""
        base = base or self.drift.thresholds
        return {f.name: base.model_copy(update=f.drift.model_dump(exclude_none=True))
                for f in self.features if f.drift is not None}

    def problems(self) -> list[tuple[Path_, str]]:
        """Rules across fields, as (path of the bad value, message saying what to do)."""
        found: list[tuple[Path_, str]] = []
        if not NAME_RE.match(self.name):
            found.append((("name",), f"name {self.name!r} must be lower-case letters, digits and '-', starting "
                                     "with a letter (it is a URL path, a registry folder and a deployment name)"))
        seen: dict[str, int] = {}
        for i, feature in enumerate(self.features):
            where = ("features", i, "name")
            if feature.name in seen:
                found.append((where, f"feature {feature.name!r} is listed twice (features[{seen[feature.name]}] and "
                                     f"features[{i}]); keep one"))
            seen.setdefault(feature.name, i)
            if feature.name == self.label.column:
                found.append((where, f"feature {feature.name!r} is the label column: a model cannot take its own "
                                     "answer as an input; remove it from features"))
            if self.id is not None and feature.name == self.id:
                found.append((where, f"feature {feature.name!r} is the id column; ids identify rows and carry no "
                                     "signal that generalises: remove it from features"))
            if feature.name in self.pii_columns:
                found.append((where, f"feature {feature.name!r} is a PII column (pii: "
                                     f"{self.pii_columns[feature.name]}): models train on published data, where it "
                                     "is pseudonymised, dropped or redacted; remove it from features"))
            if feature.type != "number":
                for option in ("log1p", "clip"):
                    if option in feature.model_fields_set:
                        found.append((("features", i, option), f"{option} applies to numbers; feature "
                                                               f"{feature.name!r} is a {feature.type}"))
            if feature.clip is not None and feature.clip[0] >= feature.clip[1]:
                found.append((("features", i, "clip"), f"clip {list(feature.clip)} of feature {feature.name!r}: "
                                                       "low must be below high"))
        pii_seen: set[str] = set()
        for i, entry in enumerate(self.pii):
            if entry.column in pii_seen:
                found.append((("pii", i, "column"), f"PII column {entry.column!r} is listed twice; keep one"))
            pii_seen.add(entry.column)
            if entry.column == self.label.column:
                found.append((("pii", i, "column"), f"the label column {entry.column!r} cannot be a PII column"))
        found += self._label_problems()
        metric = self.metrics.primary
        if metric is not None and metric not in METRICS[self.task]:
            found.append((("metrics", "primary"), f"metric {metric!r} does not fit task {self.task!r}; expected one "
                                                  f"of {', '.join(METRICS[self.task])}"))
        if self.model.plugin is not None:
            for option in ("hidden", "embedding_dim"):
                if option in self.model.model_fields_set:
                    found.append((("model", option), f"{option} configures the built-in net; with a plug-in, pass "
                                                     "it under model.options"))
        elif self.model.options:
            found.append((("model", "options"), "options are passed to a plug-in; the built-in net takes hidden "
                                                "and embedding_dim"))
        return found

    def _label_problems(self) -> list[tuple[Path_, str]]:
        label, found = self.label, []
        classes = label.classes
        if classes is not None and len(set(map(str, classes))) != len(classes):
            found.append((("label", "classes"), f"classes {classes} repeat a value; list each class once"))
        if label.task == "binary":
            if classes is not None and len(classes) != 2:
                found.append((("label", "classes"), f"a binary task has two classes, not {len(classes)} ({classes}); "
                                                    "use task: multiclass for more"))
            if label.positive_class is None:
                found.append((("label", "positive_class"), "a binary task needs positive_class: the label value "
                                                           "the model's probability is about"))
            elif classes is not None and str(label.positive_class) not in map(str, classes):
                found.append((("label", "positive_class"), f"positive_class {label.positive_class!r} is not one of "
                                                           f"the classes {classes}"))
        elif label.task == "multiclass":
            if not classes or len(classes) < 3:
                found.append((("label", "classes"), "a multiclass task needs classes: every class (at least three) "
                                                    "in a fixed order; two classes are task: binary"))
            if label.positive_class is not None:
                found.append((("label", "positive_class"), "positive_class is for binary tasks"))
        else:
            if classes is not None or label.positive_class is not None:
                found.append((("label",), "a regression label has no classes or positive_class"))
        if label.transform != "none" and label.task != "regression":
            found.append((("label", "transform"), f"transform {label.transform!r} is for regression labels"))
        return found
