"""Metrics per task, in numpy (no scikit-learn needed): what training reports and gates compare.

`task_metrics(task, targets, outputs)` takes the served model's outputs: the positive-class
probability [N] (binary), class probabilities [N, C] (multiclass) or predictions [N] in the label's
own units (regression), and the targets as `FeatureSpec.targets` gives them.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-15


def task_metrics(task: str, targets: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    if task == "binary":
        return classification_metrics(targets, np.asarray(outputs, dtype=np.float64).reshape(-1))
    if task == "multiclass":
        return multiclass_metrics(targets.astype(np.int64), np.asarray(outputs, dtype=np.float64))
    return regression_metrics(np.asarray(targets, dtype=np.float64), np.asarray(outputs, dtype=np.float64).reshape(-1))


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Binary: accuracy, precision, recall, F1 at `threshold`; ROC AUC, PR AUC (average precision), log loss."""
    y = labels.astype(bool)
    predicted = scores >= threshold
    tp = float(np.sum(predicted & y))
    fp = float(np.sum(predicted & ~y))
    fn = float(np.sum(~predicted & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    p = np.clip(scores, EPS, 1 - EPS)
    log_loss = float(-np.mean(np.where(y, np.log(p), np.log(1 - p)))) if len(y) else float("nan")
    return {"accuracy": float(np.mean(predicted == y)), "precision": precision, "recall": recall, "f1": f1,
            "roc_auc": roc_auc(y, scores), "pr_auc": average_precision(y, scores), "log_loss": log_loss,
            "positives": int(y.sum()), "rows": len(y)}


def multiclass_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1 (over the classes present in the labels or the predictions, as scikit-learn's
    default) and log loss."""
    classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    f1s = []
    for c in range(classes):
        tp = float(np.sum((predicted == c) & (labels == c)))
        fp = float(np.sum((predicted == c) & (labels != c)))
        fn = float(np.sum((predicted != c) & (labels == c)))
        if tp + fp + fn == 0:
            continue  # a class absent from both: scikit-learn's labels=present-classes behaviour
        f1s.append(2 * tp / (2 * tp + fp + fn))
    p = np.clip(probabilities[np.arange(len(labels)), labels], EPS, 1.0)
    return {"accuracy": float(np.mean(predicted == labels)) if len(labels) else float("nan"),
            "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
            "log_loss": float(-np.mean(np.log(p))) if len(labels) else float("nan"), "rows": len(labels)}


def regression_metrics(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² in the label's own units."""
    error = predicted - y
    total = float(np.sum((y - y.mean()) ** 2))
    return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))),
            "r2": 1 - float(np.sum(error ** 2)) / total if total > 0 else float("nan"), "rows": len(y)}


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney U with average ranks for ties."""
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve, step-wise (as scikit-learn's average_precision_score)."""
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    tp = np.cumsum(hits)[distinct]
    precision = tp / (distinct + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
