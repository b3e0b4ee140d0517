"""Live quality of one model version over a sliding window of labelled rows.

The window is a bounded deque (``window_rows``) of (truth, predicted label, score,
group values); metrics are recomputed from it on demand, so memory stays
O(window) whatever the traffic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

OTHER_GROUP = "other"


@dataclass(frozen=True)
class Labelled:
    """One served row whose true label arrived."""

    truth: Any
    predicted: Any
    score: float | None
    """Positive-class probability (binary classifiers) or the regression prediction."""
    groups: Mapping[str, str]


def classification_metrics(
    truth: Sequence[Any], predicted: Sequence[Any], scores: Sequence[float | None], positive: Any
) -> dict[str, float]:
    """Accuracy, F1 (positive class) and ROC AUC (when both classes are present)."""
    y = np.asarray([str(t) for t in truth])
    p = np.asarray([str(v) for v in predicted])
    pos = str(positive)
    out = {
        "accuracy": float(accuracy_score(y, p)),
        "f1": float(f1_score(y == pos, p == pos, zero_division=0.0)),
    }
    if all(s is not None for s in scores) and len(set(y.tolist())) > 1:
        out["roc_auc"] = float(roc_auc_score(y == pos, np.asarray(scores, dtype=np.float64)))
    return out


def regression_metrics(truth: Sequence[Any], predicted: Sequence[Any]) -> dict[str, float]:
    """MAE and RMSE."""
    err = np.asarray(predicted, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}


def group_rates(truth: Sequence[Any], predicted: Sequence[Any], positive: Any) -> dict[str, float]:
    """False-positive rate, false-negative rate and selection rate of one group."""
    y = np.asarray([str(t) == str(positive) for t in truth])
    p = np.asarray([str(v) == str(positive) for v in predicted])
    out = {"selection_rate": float(p.mean()) if p.size else 0.0}
    if (~y).sum():
        out["fpr"] = float((p & ~y).sum() / (~y).sum())
    if y.sum():
        out["fnr"] = float((~p & y).sum() / y.sum())
    return out


def largest_gaps(per_group: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per rate: the largest difference between any two groups that have it."""
    gaps: dict[str, float] = {}
    for metric in ("fpr", "fnr", "selection_rate"):
        values = [g[metric] for g in per_group.values() if metric in g]
        if len(values) > 1:
            gaps[metric] = max(values) - min(values)
    return gaps


class QualityWindow:
    """The labelled rows of one model version, newest ``size`` kept.

    Args:
        size: rows in the sliding window.
        task: ``classification`` or ``regression``.
        positive: the positive class (the contract's last class) for F1, AUC and rates.
        min_group_rows: groups with fewer rows in the window are left out of the rates.
    """

    def __init__(self, size: int, task: str, positive: Any = None, min_group_rows: int = 30):
        self.rows: deque[Labelled] = deque(maxlen=size)
        self.task = task
        self.positive = positive
        self.min_group_rows = min_group_rows
        self.since_eval = 0
        self.total = 0

    def add(self, row: Labelled) -> None:
        """Add one labelled row."""
        self.rows.append(row)
        self.since_eval += 1
        self.total += 1

    def __len__(self) -> int:
        return len(self.rows)

    def metrics(self) -> dict[str, float]:
        """Quality of the window (empty when it has no rows)."""
        self.since_eval = 0
        if not self.rows:
            return {}
        truth = [r.truth for r in self.rows]
        predicted = [r.predicted for r in self.rows]
        if self.task == "regression":
            return regression_metrics(truth, predicted)
        return classification_metrics(truth, predicted, [r.score for r in self.rows], self.positive)

    def group_metrics(self, attribute: str) -> dict[str, dict[str, float]]:
        """``<attribute>=<value>`` -> FPR, FNR, selection rate (classification only)."""
        if self.task == "regression":
            return {}
        by: dict[str, list[Labelled]] = {}
        for r in self.rows:
            by.setdefault(r.groups.get(attribute, OTHER_GROUP), []).append(r)
        return {
            f"{attribute}={value}": group_rates(
                [r.truth for r in rows], [r.predicted for r in rows], self.positive
            )
            for value, rows in sorted(by.items())
            if len(rows) >= self.min_group_rows
        }
