"""Model quality: the served (compressed ONNX) model of each dataset's project against scikit-learn's
HistGradientBoosting (the strongest common tabular baseline) and a linear model, on the same split.

Each dataset goes through what `retrain` does: a project from `lakeloop init`'s inference (the example
projects use their own lakeloop.yaml), `prepare_run` (the keyed split, the fitted feature spec),
Lightning training, compression with its gates, and the chosen ONNX file scored on the test split
exactly as the server scores it. The baselines fit on the same train rows (train + validation, as
they need no early stopping of ours) and score the same test rows; categories are ordinal-encoded
(HistGradientBoosting: as categorical), numbers imputed with the training median for the linear
model.

Targets (issue 10): within 0.02 ROC AUC (binary), 0.02 accuracy and macro F1 (multiclass) and 10%
RMSE (regression) of HistGradientBoosting.

Usage: python benchmarks/quality.py [--datasets fraud,demand,breast_cancer,wine,digits,diabetes]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from benchmarks._datasets import dataset  # noqa: E402
from lakeloop.compression.compress import compress  # noqa: E402
from lakeloop.deploy import OnnxModel, test_rows  # noqa: E402
from lakeloop.modeling.features import category_strings, split_of  # noqa: E402
from lakeloop.modeling.metrics import task_metrics  # noqa: E402
from lakeloop.modeling.run import launch, prepare_run  # noqa: E402

# what each task is judged on, and the most the served model may trail HistGradientBoosting by
TARGETS = {"binary": [("roc_auc", 0.02, "abs")], "multiclass": [("accuracy", 0.02, "abs"), ("macro_f1", 0.02, "abs")],
           "regression": [("rmse", 0.10, "rel")]}


def baselines(project, frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    split = split_of(frame, project.id)
    train, test = frame[split != "test"], frame[split == "test"]
    features = [f.name for f in project.features]
    categorical = [f.name for f in project.features if f.type == "category"]
    numeric = [f for f in features if f not in categorical]

    def x(part: pd.DataFrame) -> pd.DataFrame:
        out = part[features].copy()
        for c in categorical:
            out[c] = category_strings(out[c]).to_numpy(dtype=object)
        for c in numeric:
            out[c] = pd.to_numeric(out[c].astype("float64"), errors="coerce")
        return out

    task = project.task
    classes = [str(c) for c in project.label.classes or []]
    if task == "regression":
        y_train, y_test = train[project.label.column].to_numpy(float), test[project.label.column].to_numpy(float)
    else:
        y_train = pd.Index(classes).get_indexer(category_strings(train[project.label.column]).to_numpy())
        y_test = pd.Index(classes).get_indexer(category_strings(test[project.label.column]).to_numpy())
    ordinal = ColumnTransformer([("c", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                                      encoded_missing_value=-1), categorical)],
                                remainder="passthrough", verbose_feature_names_out=False)
    one_hot = ColumnTransformer([("c", OneHotEncoder(handle_unknown="ignore"), categorical),
                                 ("n", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric)])
    is_category = [True] * len(categorical) + [False] * len(numeric)
    if task == "regression":
        models = {"HistGradientBoosting": make_pipeline(ordinal, HistGradientBoostingRegressor(
            categorical_features=is_category, random_state=0)), "linear (ridge)": make_pipeline(one_hot, Ridge())}
    else:
        models = {"HistGradientBoosting": make_pipeline(ordinal, HistGradientBoostingClassifier(
            categorical_features=is_category, random_state=0)),
            "linear (logistic)": make_pipeline(one_hot, LogisticRegression(max_iter=2000))}
    found = {}
    for name, model in models.items():
        model.fit(x(train), y_train)
        if task == "regression":
            scores = model.predict(x(test))
        else:
            scores = model.predict_proba(x(test))
            scores = scores[:, 1] if task == "binary" else scores
        found[name] = task_metrics(task, y_test, scores)
    return found


def served_model(project, frame: pd.DataFrame, work: Path) -> tuple[dict[str, float], str, float]:
    """Train, compress and score the chosen ONNX model on the test split, as a retrain would."""
    started = time.perf_counter()
    config = project.training.model_copy(update={"work_root": str(work / "runs")})
    workdir = prepare_run(project, frame, "q" * 64, config, {})
    launch(workdir, config)
    report = compress(workdir, frame, project.compression)
    metrics = OnnxModel(Path(report.chosen_path)).metrics(test_rows(frame, project.id))
    return metrics, report.chosen, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fraud,demand,breast_cancer,wine,digits,diabetes")
    parser.add_argument("--rows", type=int, default=20_000, help="Rows generated for the example projects.")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets.split(","):
            work = Path(tmp) / name
            project, frame = dataset(name, work / "project", args.rows)
            ours, chosen, seconds = served_model(project, frame, work)
            theirs = baselines(project, frame)
            hgb = theirs["HistGradientBoosting"]
            for metric, allowed, kind in TARGETS[project.task]:
                # how far behind: RMSE relative (higher is worse), scores absolute (lower is worse)
                behind = (ours[metric] - hgb[metric]) / hgb[metric] if kind == "rel" else hgb[metric] - ours[metric]
                linear = next(v for k, v in theirs.items() if k.startswith("linear"))[metric]
                shown = f"{behind:+.1%}" if kind == "rel" else f"{round(-behind, 4) + 0.0:+.4f}"
                rows.append((name, project.task, len(frame), metric, ours[metric], hgb[metric], linear, shown,
                             behind <= allowed, chosen, seconds))
            print(f"{name}: done in {rows[-1][-1]:.0f} s", file=sys.stderr, flush=True)
    print("| dataset | task | rows | metric | lakeloop (served ONNX) | HistGradientBoosting | linear | vs HGB | "
          "target | chosen | train+compress s |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |")
    for name, task, n, metric, ours, hgb, linear, gap, ok, chosen, seconds in rows:
        print(f"| {name} | {task} | {n} | {metric} | {ours:.4f} | {hgb:.4f} | {linear:.4f} | {gap} | "
              f"{'met' if ok else 'MISSED'} | {chosen} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
