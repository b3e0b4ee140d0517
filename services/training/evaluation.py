"""Honest evaluation on the holdout: metrics, per-group metrics, importance, baselines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from shared.contract import Contract
from shared.features import onnx_input_names

from .export import in_contract_order
from .scoring import (
    CV_SCORERS,
    classification_metrics,
    improvement,
    ovr_roc_auc,
    regression_metrics,
)

RELATIVE_MAE = "relative_mae"
"""A group's MAE divided by the holdout's mean absolute deviation of the label."""


class Predictions:
    """A model's holdout outputs: labels and probabilities, or regression values.

    Probability columns are in the contract's class order (``label.classes``), as the
    exported model and serving give them, whatever order the estimator sorted them in.
    """

    def __init__(self, labels: np.ndarray, proba: np.ndarray | None):
        self.labels = labels
        self.proba = proba


def labels_like(contract: Contract, y: np.ndarray, pred: Predictions) -> Predictions:
    """``pred`` with its labels as the contract's classes in ``y``'s type, matched by text.

    A champion exported elsewhere (an older release, another tool) may carry the
    classes as strings where this run's labels are numbers, or the reverse; the
    comparison on the holdout must not depend on that.
    """
    classes = contract.label.classes
    if pred.proba is None or not classes or y.dtype.kind == pred.labels.dtype.kind:
        return pred
    by_text = {str(c): c for c in classes}
    mapped = [by_text.get(str(v)) for v in pred.labels.tolist()]
    if None in mapped:
        return pred  # not the contract's classes: left as they are, and counted wrong
    return Predictions(np.asarray(mapped, dtype=y.dtype), pred.proba)


def metrics(contract: Contract, y: np.ndarray, pred: Predictions) -> dict[str, float]:
    """The task's metrics for ``pred`` against ``y``."""
    if contract.task == "regression":
        return regression_metrics(y, pred.labels.astype(np.float64).ravel())
    assert pred.proba is not None
    return classification_metrics(y, pred.labels, pred.proba, list(contract.label.classes or []))


def sklearn_predictions(contract: Contract, pipeline: Pipeline, x: pd.DataFrame) -> Predictions:
    """Predictions of a fitted sklearn pipeline."""
    if contract.task == "regression":
        return Predictions(np.asarray(pipeline.predict(x), dtype=np.float64), None)
    proba = in_contract_order(
        pipeline.predict_proba(x), list(pipeline.classes_), list(contract.label.classes or [])
    )
    return Predictions(np.asarray(pipeline.predict(x)), proba)


def trivial_predictions(contract: Contract, y_train: np.ndarray, rows: int) -> Predictions:
    """The trivial baseline: the training prior (classes) or mean (regression) for every row."""
    if contract.task == "regression":
        return Predictions(np.full(rows, float(np.mean(y_train))), None)
    classes = list(contract.label.classes or [])
    prior = np.array([np.mean(y_train == c) for c in classes], dtype=np.float64)
    majority = classes[int(np.argmax(prior))]
    return Predictions(np.array([majority] * rows), np.tile(prior, (rows, 1)))


def _rates(y: np.ndarray, labels: np.ndarray, positive: Any) -> dict[str, float]:
    truth = y == positive
    said = labels == positive
    negatives, positives = int((~truth).sum()), int(truth.sum())
    out = {"selection_rate": float(said.mean()) if len(said) else 0.0}
    if negatives:
        out["fpr"] = float((said & ~truth).sum() / negatives)
    if positives:
        out["fnr"] = float((~said & truth).sum() / positives)
    return out


RATES = ("selection_rate", "fpr", "fnr")


def rate_names(classes: list[Any]) -> list[str]:
    """The keys :func:`class_rates` gives for ``classes``."""
    if len(classes) == 2:
        return list(RATES)
    return [f"{r}:{c}" for c in classes for r in RATES]


def class_rates(y: np.ndarray, labels: np.ndarray, classes: list[Any]) -> dict[str, float]:
    """Selection rate, FPR and FNR: of the positive class (binary, the contract's last
    class), else of every class one-vs-rest, keyed ``<rate>:<class>``."""
    if len(classes) == 2:
        return _rates(y, labels, classes[-1])
    out: dict[str, float] = {}
    for c in classes:
        out.update({f"{k}:{c}": v for k, v in _rates(y, labels, c).items()})
    return out


def label_spread(y: np.ndarray) -> float:
    """Mean absolute deviation of a regression label from its mean (1.0 when constant).

    The MAE of always predicting the mean: dividing a group's MAE by it gives a
    scale-free error (0 = perfect, 1 = no better than the mean), comparable between
    groups whatever the label's units.
    """
    values = np.asarray(y, dtype=np.float64)
    spread = float(np.mean(np.abs(values - values.mean()))) if values.size else 0.0
    return spread if spread > 0 else 1.0


def group_metrics(
    contract: Contract,
    x: pd.DataFrame,
    y: np.ndarray,
    pred: Predictions,
    *,
    min_rows: int,
) -> dict[str, Any]:
    """Per-group metrics for every ``groups`` attribute, and the largest gaps.

    Returns ``{attribute: {"groups": {value: {...}}, "gaps": {rate: gap}, "max_gap": x}}``.
    The gaps are of :func:`class_rates` for classification and of the relative MAE
    (:data:`RELATIVE_MAE`, the group's MAE over the :func:`label_spread` of every row of
    ``y``) for regression. Groups smaller than ``min_rows`` are reported with
    ``"small": true`` and left out of the gaps.
    """
    out: dict[str, Any] = {}
    classes = list(contract.label.classes or [])
    regression = contract.task == "regression"
    spread = label_spread(y) if regression else 1.0
    for attribute in contract.groups:
        column = x[attribute].astype(str).to_numpy()
        groups: dict[str, Any] = {}
        for value in sorted(set(column.tolist())):
            mask = column == value
            sub = Predictions(pred.labels[mask], None if pred.proba is None else pred.proba[mask])
            entry: dict[str, Any] = {"rows": int(mask.sum()), "small": bool(mask.sum() < min_rows)}
            entry.update(metrics(contract, y[mask], sub))
            if regression:
                entry[RELATIVE_MAE] = entry["mae"] / spread
            else:
                entry.update(class_rates(y[mask], pred.labels[mask], classes))
            groups[value] = entry
        gaps: dict[str, float] = {}
        for rate in [RELATIVE_MAE] if regression else rate_names(classes):
            values = [g[rate] for g in groups.values() if not g["small"] and rate in g]
            if len(values) >= 2:
                gaps[rate] = float(max(values) - min(values))
        out[attribute] = {
            "groups": groups,
            "gaps": gaps,
            "max_gap": max(gaps.values(), default=0.0),
            **({"label_spread": spread} if regression else {}),
        }
    return out


def group_figures(entry: dict[str, Any]) -> list[str]:
    """The fairness figures of one group's entry, in a fixed order (the model card's)."""
    rates = [k for k in entry if k.split(":")[0] in RATES]
    return [*rates, *(k for k in ("mae", RELATIVE_MAE) if k in entry)]


def gap_measure(contract: Contract, entry: dict[str, Any]) -> str:
    """What the gaps of :func:`group_metrics` measure, in words."""
    if contract.task == "regression":
        return (
            f"{RELATIVE_MAE} = a group's MAE / the holdout label's mean absolute deviation "
            f"{entry.get('label_spread', 1.0):.4g}"
        )
    classes = list(contract.label.classes or [])
    if len(classes) == 2:
        return f"rates of the positive class {classes[-1]!r}"
    return "rates of each class one-vs-rest, <rate>:<class>"


def fairness_gap(groups: dict[str, Any]) -> float:
    """The largest gap between groups over every attribute."""
    return max((float(a["max_gap"]) for a in groups.values()), default=0.0)


Feeds = dict[str, np.ndarray]
"""ONNX Runtime feeds of a frame (:func:`shared.features.onnx_feeds`)."""


def importance_metric(contract: Contract) -> str:
    """The metric permutation importance is measured in: the primary metric when it
    scores single rows' predictions (every cross-validation metric does), else accuracy
    (``calibration_error`` is a property of the whole set, not a per-prediction loss)."""
    metric = contract.promotion.primary_metric
    return metric if metric in CV_SCORERS else "accuracy"


def metric_value(contract: Contract, metric: str, y: np.ndarray, pred: Predictions) -> float:
    """One metric of ``pred`` against ``y``, computed alone when that is cheap."""
    if contract.task == "classification" and metric in ("accuracy", "roc_auc"):
        assert pred.proba is not None
        classes = list(contract.label.classes or [])
        if metric == "accuracy":
            return float(np.mean(pred.labels == y))
        if len(classes) == 2:
            positive = y == classes[1]
            if 0 < int(positive.sum()) < len(y):
                return float(roc_auc_score(positive, pred.proba[:, 1]))
            return float("nan")
        value = ovr_roc_auc(y, pred.proba, classes)
        return float("nan") if value is None else value
    return float(metrics(contract, y, pred).get(metric, float("nan")))


def importance(
    contract: Contract,
    predict: Callable[[Feeds], Predictions],
    feeds: Feeds,
    y: np.ndarray,
    *,
    repeats: int,
    seed: int,
    check: Callable[[], None] = lambda: None,
    features: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Permutation importance of each contract feature, measured on the exported model.

    A feature's importance is the metric (:func:`importance_metric`) lost when its
    values are shuffled across rows, averaged over ``repeats`` seeded shuffles. The
    model is the ONNX graph serving runs (``predict``, on ``feeds`` of the latest
    holdout rows): its inputs are one tensor per feature, so a shuffle permutes one
    tensor and nothing is encoded again. Each feature's shuffles are seeded by
    ``(seed, its position in the contract)``, so ``features`` (a subset, default all)
    can be ranked in separate processes and merged with :func:`ranked`. ``check`` is
    called before each feature (it raises to abandon the work).
    """
    metric = importance_metric(contract)
    inputs = onnx_input_names(contract)
    baseline = metric_value(contract, metric, y, predict(feeds))
    wanted = set(contract.feature_names if features is None else features)
    out = []
    for position, name in enumerate(contract.feature_names):
        if name not in wanted:
            continue
        check()
        column = inputs[name]
        rng = np.random.default_rng([seed, position])
        drops = []
        for _ in range(repeats):
            shuffled = {**feeds, column: feeds[column][rng.permutation(len(y))]}
            score = metric_value(contract, metric, y, predict(shuffled))
            # improvement(metric, a, b) is how much better a is than b, in either direction.
            drops.append(improvement(metric, baseline, score))
        out.append({"feature": name, "mean": float(np.mean(drops)), "std": float(np.std(drops))})
    return ranked(out)


def ranked(importances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feature importances, the largest loss first."""
    return sorted(importances, key=lambda r: r["mean"], reverse=True)


def coefficients(pipeline: Pipeline) -> dict[str, Any]:
    """The linear model's intercept and coefficients by (one-hot) input column."""
    model = pipeline.named_steps["model"]
    names = [str(n) for n in pipeline.named_steps["prep"].get_feature_names_out()]
    coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(model.intercept_, dtype=np.float64))
    weights = {name: float(coef[0, i]) for i, name in enumerate(names)}
    top = sorted(weights.items(), key=lambda kv: abs(kv[1]), reverse=True)
    return {
        "intercept": [float(v) for v in intercept],
        "coefficients": weights,
        "top": [{"input": k, "weight": v} for k, v in top[:10]],
        "note": "weights on standardised numeric inputs and one-hot category columns"
        + ("; positive = more likely the last class" if coef.shape[0] == 1 else ""),
    }
