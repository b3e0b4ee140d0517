"""Metric names, their direction, and how to compute them from predictions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)

LOWER_IS_BETTER = frozenset({"log_loss", "calibration_error", "mae", "rmse"})
IN_LABEL_UNITS = frozenset({"mae", "rmse"})
"""Metrics measured in the regression label's units (their scale is the label's)."""

# sklearn scorer names used by cross-validation for each primary metric.
CV_SCORERS = {
    "roc_auc": "roc_auc_ovr",
    "accuracy": "accuracy",
    "f1": "f1_macro",
    "log_loss": "neg_log_loss",
    "mae": "neg_mean_absolute_error",
    "rmse": "neg_root_mean_squared_error",
    "r2": "r2",
}


Scoring = str | Callable[[Any, Any, np.ndarray], float]
"""What scikit-learn's ``scoring=`` takes: a scorer name or a scorer callable."""


def ovr_roc_auc(y: np.ndarray, proba: np.ndarray, classes: Sequence[Any]) -> float | None:
    """One-vs-rest macro ROC AUC, ``proba``'s columns in ``classes`` order (any order).

    Each class's AUC is taken on its own column and the mean is unweighted, as sklearn's
    ``multi_class="ovr"``; a class absent from ``y`` (a time-ordered fold may hold none
    of it) is left out of the mean instead of failing. None when no class has both
    positive and negative rows.
    """
    y = np.asarray(y)
    aucs = [
        float(roc_auc_score(y == c, proba[:, i]))
        for i, c in enumerate(classes)
        if 0 < int(np.sum(y == c)) < len(y)
    ]
    return float(np.mean(aucs)) if aucs else None


def ovr_roc_auc_scorer(estimator: Any, x: Any, y: np.ndarray) -> float:
    """A scikit-learn scorer of :func:`ovr_roc_auc` (NaN when it is undefined)."""
    value = ovr_roc_auc(y, np.asarray(estimator.predict_proba(x)), list(estimator.classes_))
    return float("nan") if value is None else value


def cv_scoring(metric: str, classes: Sequence[Any]) -> Scoring:
    """The scikit-learn scoring of a primary metric: binary ROC AUC by name, a multiclass
    one by :func:`ovr_roc_auc_scorer`, the others by :data:`CV_SCORERS`.

    Raises:
        ValueError: the metric has no scorer.
    """
    if metric == "roc_auc":
        return "roc_auc" if len(classes) == 2 else ovr_roc_auc_scorer
    if metric not in CV_SCORERS:
        raise ValueError(f"primary metric {metric!r} has no cross-validation scorer")
    return CV_SCORERS[metric]


def higher_is_better(metric: str) -> bool:
    """True when a larger value of ``metric`` is better."""
    return metric not in LOWER_IS_BETTER


def improvement(metric: str, challenger: float, champion: float) -> float:
    """How much better ``challenger`` is than ``champion`` (positive = better)."""
    return challenger - champion if higher_is_better(metric) else champion - challenger


def relative_improvement(metric: str, challenger: float, champion: float) -> float:
    """:func:`improvement` as a share of the champion's value for the metrics in label
    units (``mae``, ``rmse``), so one limit fits every label scale; others as is."""
    gain = improvement(metric, challenger, champion)
    if metric in IN_LABEL_UNITS:
        return gain / max(abs(champion), 1e-12)
    return gain


def calibration_error(y_true: np.ndarray, positive_proba: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the positive class over equal-width bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(positive_proba, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(
                float(y_true[mask].mean()) - float(positive_proba[mask].mean())
            )
    return total / max(len(y_true), 1)


def classification_metrics(
    y: np.ndarray, labels: np.ndarray, proba: np.ndarray, classes: list[Any]
) -> dict[str, float]:
    """Accuracy, ROC AUC, F1, log loss and (binary) calibration error.

    ``proba``'s columns are in ``classes`` order (the contract's), which need not be
    sorted: the multiclass ROC AUC is the one-vs-rest macro average (sklearn's
    ``multi_class="ovr"``), each class's AUC taken on its own column, and the log loss
    reads each row's probability of its true class from the column of that class.
    """
    out = {"accuracy": float(accuracy_score(y, labels))}
    present = set(np.unique(y).tolist())
    if len(classes) == 2:
        positive = (y == classes[1]).astype(int)
        out["f1"] = float(f1_score(positive, (labels == classes[1]).astype(int), zero_division=0))
        if len(present) == 2:
            out["roc_auc"] = float(roc_auc_score(positive, proba[:, 1]))
        out["calibration_error"] = calibration_error(positive, proba[:, 1])
    else:
        out["f1"] = float(f1_score(y, labels, average="macro", zero_division=0))
        if len(present) == len(classes):
            out["roc_auc"] = float(ovr_roc_auc(y, proba, classes) or 0.0)
    column = {str(c): i for i, c in enumerate(classes)}
    truth = np.asarray([column[str(v)] for v in y.tolist()], dtype=np.int64)
    clipped = np.clip(proba, 1e-15, 1.0)
    normed = clipped / clipped.sum(axis=1, keepdims=True)
    if len(y):
        out["log_loss"] = float(-np.mean(np.log(normed[np.arange(len(y)), truth])))
    return out


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R2."""
    return {
        "mae": float(mean_absolute_error(y, pred)),
        "rmse": float(root_mean_squared_error(y, pred)),
        "r2": float(r2_score(y, pred)) if len(y) > 1 else 0.0,
    }
