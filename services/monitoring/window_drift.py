"""Drift of served rows against the training reference of the version that served them.

Feature values are counted on the reference profile's own bins
(:class:`shared.drift.StreamingHistogram`), so a window costs O(bins) memory. When a
window of ``window_rows`` rows is complete its scores are computed and the counts
reset (tumbling windows).

Prediction drift: profiles carry no prediction histogram, so the reference of a
version's prediction distribution is its *first complete window* of served predictions,
and later windows are compared with it by PSI. What is counted depends on the task
(:func:`prediction_value`): a binary classifier's positive-class probability on fixed
equal-width bins over [0, 1]; a multiclass classifier's predicted class (one bin per
contract class, plus one for anything else); a regressor's predicted value, on the
deciles of the first window (kept until that window closes, so O(window) memory once).
This measures how the version's outputs move after it went live; it is blind to a
shift already present in the first window (the feature drift covers that).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.contract import Contract
from shared.drift import Profile, StreamingHistogram, feature_scores, psi, reference_counts
from shared.features import to_frame

SCORE_BINS = 20
SCORE_EDGES = [float(e) for e in np.linspace(0.0, 1.0, SCORE_BINS + 1)[1:-1]]


@dataclass
class WindowReport:
    """Scores of one completed window."""

    rows: int
    features: dict[str, dict[str, float]]
    """feature -> {"psi", "ks", "wasserstein"} (numeric) or {"psi", "js", "chi2_p"}
    (category); no "wasserstein" with a profile stored before it existed."""
    prediction_drift: float | None
    drifted: list[str] = field(default_factory=list)


def prediction_value(contract: Contract, outputs: Mapping[str, Any]) -> Any:
    """What prediction drift counts of one served row's outputs (see the module doc)."""
    if contract.task == "regression":
        return outputs.get("prediction")
    if len(contract.label.classes or []) > 2:
        label = outputs.get("label")
        return None if label is None else str(label)
    probs = outputs.get("probabilities")
    if isinstance(probs, list | tuple) and probs:
        return probs[-1]
    return None


class PredictionHistogram:
    """Counts of one version's served predictions per window, and its reference window.

    Args:
        contract: the model's contract (the task decides what is counted and how).
    """

    def __init__(self, contract: Contract):
        classes = contract.label.classes or []
        self.values: list[float] | None = None
        if contract.task == "regression":
            self.hist: StreamingHistogram | None = None
            self.values = []  # the first window, until its deciles are known
        elif len(classes) > 2:
            self.hist = StreamingHistogram(vocab=[str(c) for c in classes])
        else:
            self.hist = StreamingHistogram(edges=SCORE_EDGES)
        self.reference: np.ndarray | None = None

    def update(self, predictions: Sequence[Any]) -> None:
        """Count one batch of :func:`prediction_value` results."""
        if self.hist is not None and self.hist.vocab is not None:
            self.hist.update([p for p in predictions if p is not None])
        elif self.hist is not None:
            self.hist.update([_as_float(p) for p in predictions])
        else:
            assert self.values is not None
            self.values.extend(v for v in map(_as_float, predictions) if np.isfinite(v))

    def close(self) -> float | None:
        """PSI of the window against the reference (None: nothing counted); resets."""
        if self.hist is None:
            assert self.values is not None
            if not self.values:
                return None
            first = np.asarray(self.values)
            cuts = np.quantile(first, np.linspace(0.0, 1.0, SCORE_BINS // 2 + 1)[1:-1])
            self.hist = StreamingHistogram(edges=[float(e) for e in np.unique(cuts)])
            self.hist.update(first)
            self.values = None
        if not self.hist.total:
            return None
        if self.reference is None:
            self.reference = self.hist.counts.copy()
        drift = psi(self.reference, self.hist.counts)
        self.hist.reset()
        return drift


def _as_float(value: Any) -> float:
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")  # a score that is not a number cannot be binned


class VersionDrift:
    """Tumbling-window drift of one model version.

    Args:
        contract: the model's data contract (values are converted as for training).
        profile: the reference profile of the version's training data.
        window_rows: rows per window.
        psi_threshold: a feature whose PSI exceeds this is reported as drifted.
        wasserstein_threshold: so is a numeric feature whose normed Wasserstein distance
            reaches this (it sees small shifts that PSI misses).
    """

    def __init__(
        self,
        contract: Contract,
        profile: Profile,
        window_rows: int,
        psi_threshold: float,
        wasserstein_threshold: float,
    ):
        self.contract = contract
        self.profile = profile
        self.window_rows = window_rows
        self.psi_threshold = psi_threshold
        self.wasserstein_threshold = wasserstein_threshold
        known = set(contract.feature_names)
        self.features = [f for f in (*profile.numeric, *profile.categories) if f in known]
        self.hists: dict[str, StreamingHistogram] = {
            f: reference_counts(profile, f)[1] for f in self.features
        }
        self.predictions = PredictionHistogram(contract)
        self.rows = 0

    def add(
        self, inputs: Sequence[Mapping[str, Any]], predictions: Sequence[Any]
    ) -> list[WindowReport]:
        """Count rows (their inputs and :func:`prediction_value`); a report for every
        window they complete."""
        reports: list[WindowReport] = []
        start = 0
        while start < len(inputs):
            take = min(self.window_rows - self.rows, len(inputs) - start)
            self._count(inputs[start : start + take], predictions[start : start + take])
            self.rows += take
            start += take
            if self.rows >= self.window_rows:
                reports.append(self._close())
        return reports

    def _count(self, rows: Sequence[Mapping[str, Any]], predictions: Sequence[Any]) -> None:
        # The same conversion as the training frame the profile was built from.
        frame = to_frame(
            self.contract, {f: [r.get(f) for r in rows] for f in self.contract.feature_names}
        )
        for f, hist in self.hists.items():
            hist.update(frame[f].to_numpy())
        self.predictions.update(predictions)

    def _close(self) -> WindowReport:
        per_feature = {
            f: feature_scores(self.profile, f, h.counts, h.sums) for f, h in self.hists.items()
        }
        drifted = [
            f
            for f, s in per_feature.items()
            if s["psi"] > self.psi_threshold
            or s.get("wasserstein", 0.0) >= self.wasserstein_threshold
        ]
        prediction_drift = self.predictions.close()
        report = WindowReport(self.rows, per_feature, prediction_drift, drifted)
        for h in self.hists.values():
            h.reset()
        self.rows = 0
        return report
