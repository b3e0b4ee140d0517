"""Live quality of one model version over a sliding window of labelled rows.

The window is a bounded :class:`~.windows.PartitionedWindow` (``window_rows``) of
(truth, predicted label, score, group values), each row tagged with the stream partition
its label was joined on, so a partition's share can be snapshotted and restored
(:mod:`.state`); metrics are recomputed from it on demand, so memory stays O(window)
whatever the traffic. Each task has its own figures, as in training:
binary accuracy, F1 and ROC AUC of the positive class; multiclass accuracy and macro
F1; regression MAE, RMSE and R2. Group figures are rates (FPR, FNR, selection rate;
one-vs-rest per class for multiclass) or, for regression, the relative MAE (a group's
MAE over the window's mean absolute deviation of the label), scale-free like training's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from .windows import PartitionedWindow, Stamps

OTHER_GROUP = "other"
RELATIVE_MAE = "relative_mae"


@dataclass(frozen=True)
class Labelled:
    """One served row whose true label arrived."""

    truth: Any
    predicted: Any
    score: float | None
    """Positive-class probability (binary classifiers) or the regression prediction."""
    groups: Mapping[str, str]


def classification_metrics(
    truth: Sequence[Any],
    predicted: Sequence[Any],
    scores: Sequence[float | None],
    positive: Any,
    classes: Sequence[Any] = (),
) -> dict[str, float]:
    """Accuracy and F1; binary: F1 of the positive class and ROC AUC (when both classes
    are present); multiclass (more than two ``classes``): macro F1 over the classes."""
    y = np.asarray([str(t) for t in truth])
    p = np.asarray([str(v) for v in predicted])
    out = {"accuracy": float(accuracy_score(y, p))}
    if len(classes) > 2:
        names = [str(c) for c in classes]
        out["f1"] = float(f1_score(y, p, labels=names, average="macro", zero_division=0.0))
        return out
    pos = str(positive)
    out["f1"] = float(f1_score(y == pos, p == pos, zero_division=0.0))
    if all(s is not None for s in scores) and len(set(y.tolist())) > 1:
        out["roc_auc"] = float(roc_auc_score(y == pos, np.asarray(scores, dtype=np.float64)))
    return out


def regression_metrics(truth: Sequence[Any], predicted: Sequence[Any]) -> dict[str, float]:
    """MAE, RMSE and R2 (R2 once the labels vary)."""
    y = np.asarray(truth, dtype=np.float64)
    err = np.asarray(predicted, dtype=np.float64) - y
    out = {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}
    total = float(np.sum((y - y.mean()) ** 2))
    if len(y) > 1 and total > 0:
        out["r2"] = 1.0 - float(np.sum(err**2)) / total
    return out


def _rates(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    out = {"selection_rate": float(p.mean()) if p.size else 0.0}
    if (~y).sum():
        out["fpr"] = float((p & ~y).sum() / (~y).sum())
    if y.sum():
        out["fnr"] = float((~p & y).sum() / y.sum())
    return out


def group_rates(
    truth: Sequence[Any], predicted: Sequence[Any], positive: Any, classes: Sequence[Any] = ()
) -> dict[str, float]:
    """False-positive rate, false-negative rate and selection rate of one group: of the
    positive class, or (more than two ``classes``) of each class one-vs-rest, keyed
    ``<rate>:<class>`` as training's model card does."""
    y = np.asarray([str(t) for t in truth])
    p = np.asarray([str(v) for v in predicted])
    if len(classes) <= 2:
        return _rates(y == str(positive), p == str(positive))
    out: dict[str, float] = {}
    for c in classes:
        out.update({f"{k}:{c}": v for k, v in _rates(y == str(c), p == str(c)).items()})
    return out


def group_errors(truth: Sequence[Any], predicted: Sequence[Any], spread: float) -> dict[str, float]:
    """MAE of one group, and its relative MAE: the MAE over ``spread``, the window's mean
    absolute deviation of the label (training's fairness measure for regression)."""
    err = np.abs(np.asarray(predicted, dtype=np.float64) - np.asarray(truth, dtype=np.float64))
    mae = float(err.mean()) if err.size else 0.0
    return {"mae": mae, RELATIVE_MAE: mae / spread}


def largest_gaps(per_group: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per rate (or relative MAE): the largest difference between any two groups."""
    gaps: dict[str, float] = {}
    names = sorted({k for g in per_group.values() for k in g if k != "mae"})
    for metric in names:
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
        classes: the contract's classes (more than two: multiclass metrics and rates).
        stamps: orders the rows across partitions (the core shares one).
    """

    def __init__(
        self,
        size: int,
        task: str,
        positive: Any = None,
        min_group_rows: int = 30,
        classes: Sequence[Any] = (),
        stamps: Stamps | None = None,
    ):
        self.rows: PartitionedWindow[Labelled] = PartitionedWindow(size)
        self.task = task
        self.positive = positive
        self.min_group_rows = min_group_rows
        self.classes = list(classes)
        self.stamps = stamps or Stamps()
        self.since_eval = 0
        """Rows added since the owner last evaluated the window."""
        self.joined: Counter[int] = Counter()
        """Rows ever added, per partition (durable with the partition's snapshot)."""

    def add(self, row: Labelled, partition: int = 0) -> None:
        """Add one labelled row, joined on stream partition ``partition``."""
        self.rows.append(row, partition, self.stamps())
        self.since_eval += 1
        self.joined[partition] += 1

    @property
    def total(self) -> int:
        """Rows ever added over the partitions held."""
        return sum(self.joined.values())

    def of(self, partition: int) -> tuple[int, list[tuple[int, Labelled]]]:
        """One partition's rows ever added, and its (stamp, row) pairs in the window."""
        return self.joined[partition], self.rows.of(partition)

    def restore(self, partition: int, joined: int, rows: Iterable[tuple[int, Labelled]]) -> None:
        """Put back one partition's share (from :meth:`of` in an earlier process)."""
        rows = list(rows)
        self.rows.restore(partition, rows)
        self.joined[partition] = joined
        for stamp, _ in rows:
            self.stamps.observe(stamp)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the rows of ``partitions`` (now another replica's)."""
        gone = set(partitions)
        self.rows.drop(gone)
        for k in gone:
            self.joined.pop(k, None)

    def __len__(self) -> int:
        return len(self.rows)

    def _numeric(self) -> list[Labelled]:
        # A regression row whose label or prediction is not a number cannot be scored.
        return [r for r in self.rows if _finite(r.truth) and _finite(r.predicted)]

    def metrics(self) -> dict[str, float]:
        """Quality of the window (empty when it has no rows)."""
        rows = self._numeric() if self.task == "regression" else list(self.rows)
        if not rows:
            return {}
        truth = [r.truth for r in rows]
        predicted = [r.predicted for r in rows]
        if self.task == "regression":
            return regression_metrics(truth, predicted)
        scores = [r.score for r in rows]
        return classification_metrics(truth, predicted, scores, self.positive, self.classes)

    def group_metrics(self, attribute: str) -> dict[str, dict[str, float]]:
        """``<attribute>=<value>`` -> FPR, FNR, selection rate (classification; per class
        one-vs-rest for multiclass) or MAE and relative MAE (regression)."""
        regression = self.task == "regression"
        rows = self._numeric() if regression else list(self.rows)
        by: dict[str, list[Labelled]] = {}
        for r in rows:
            by.setdefault(r.groups.get(attribute, OTHER_GROUP), []).append(r)
        spread = 1.0
        if regression and rows:
            y = np.asarray([float(r.truth) for r in rows])
            spread = float(np.mean(np.abs(y - y.mean()))) or 1.0
        out: dict[str, dict[str, float]] = {}
        for value, members in sorted(by.items()):
            if len(members) < self.min_group_rows:
                continue
            truth, predicted = [r.truth for r in members], [r.predicted for r in members]
            out[f"{attribute}={value}"] = (
                group_errors(truth, predicted, spread)
                if regression
                else group_rates(truth, predicted, self.positive, self.classes)
            )
        return out


def _finite(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False
