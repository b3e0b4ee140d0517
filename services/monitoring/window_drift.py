"""Drift of served rows against the training reference of the version that served them.

Feature values are counted on the reference profile's own bins
(:class:`shared.drift.StreamingHistogram`), so a window costs O(bins) memory. When a
window of ``window_rows`` rows is complete its scores are computed and the counts
reset (tumbling windows). Counts are kept per stream partition and summed when a window
closes, so each partition's share of the open window goes into its snapshot
(:mod:`.state`) and a restart resumes the window where the last checkpoint left it.

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

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.contract import Contract
from shared.drift import Profile, StreamingHistogram, feature_scores, psi, reference_counts
from shared.features import to_frame

from .windows import Stamps

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


@dataclass
class DriftShare:
    """One partition's share of a version's open drift window (a snapshot's part).

    Feature counts and sums are on the reference bins; predictions are binned counts,
    or a regressor's raw values while its first window (which fixes the bins) is open.
    ``opened`` names the window: shares of a window closed since are stale."""

    opened: int
    rows: int
    counts: dict[str, list[int]]
    sums: dict[str, list[float]]
    predictions: list[int] | None = None
    values: list[float] | None = None
    edges: list[float] | None = None
    """A regressor's prediction bins, once its first window closed."""
    reference: list[int] | None = None
    """The version's first complete window of predictions, once known."""


class PredictionHistogram:
    """Counts of one version's served predictions per window (per partition), and its
    reference window.

    Args:
        contract: the model's contract (the task decides what is counted and how).
    """

    def __init__(self, contract: Contract):
        classes = contract.label.classes or []
        self.regression = contract.task == "regression"
        self.edges: list[float] | None = None
        self.vocab: list[str] | None = None
        self.values: dict[int, list[float]] | None = None
        """A regressor's first window per partition, until its deciles are known."""
        if self.regression:
            self.values = {}
        elif len(classes) > 2:
            self.vocab = [str(c) for c in classes]
        else:
            self.edges = SCORE_EDGES
        self.parts: dict[int, StreamingHistogram] = {}
        self.reference: np.ndarray | None = None

    def _hist(self, partition: int) -> StreamingHistogram:
        if partition not in self.parts:
            self.parts[partition] = StreamingHistogram(edges=self.edges, vocab=self.vocab)
        return self.parts[partition]

    def update(self, predictions: Sequence[Any], partition: int = 0) -> None:
        """Count one batch of :func:`prediction_value` results of one partition."""
        if self.vocab is not None:
            self._hist(partition).update([p for p in predictions if p is not None])
        elif self.values is None:
            self._hist(partition).update([_as_float(p) for p in predictions])
        else:
            values = self.values.setdefault(partition, [])
            values.extend(v for v in map(_as_float, predictions) if np.isfinite(v))

    def close(self) -> float | None:
        """PSI of the window against the reference (None: nothing counted); resets."""
        if self.values is not None:
            if not any(self.values.values()):
                return None
            first = np.asarray([v for k in sorted(self.values) for v in self.values[k]])
            cuts = np.quantile(first, np.linspace(0.0, 1.0, SCORE_BINS // 2 + 1)[1:-1])
            self.edges = [float(e) for e in np.unique(cuts)]
            for k, values in self.values.items():
                self._hist(k).update(np.asarray(values))
            self.values = None
        if not self.parts:
            return None
        counts = np.sum([h.counts for h in self.parts.values()], axis=0)
        self.parts.clear()
        if not counts.sum():
            return None
        if self.reference is None:
            self.reference = counts.copy()
        return psi(self.reference, counts)

    def share(self, partition: int) -> dict[str, Any]:
        """This partition's counts (or values) and the version's bins and reference."""
        hist = self.parts.get(partition)
        values = None if self.values is None else self.values.get(partition, [])
        return {
            "predictions": None if hist is None else hist.counts.tolist(),
            "values": values,
            "edges": self.edges if self.regression and self.values is None else None,
            "reference": None if self.reference is None else self.reference.tolist(),
        }

    def restore(self, partition: int, share: DriftShare) -> None:
        """Put back a partition's share; parts counted on other bins (a regressor whose
        first window another replica closed) cannot be rebinned and are left out."""
        if self.regression and share.edges is not None and self.values is not None:
            if any(self.values.values()):
                return  # this window counts raw values, the share binned ones
            self.edges, self.values = list(share.edges), None
        if self.regression and share.edges is not None and share.edges != self.edges:
            return
        if share.reference is not None and self.reference is None:
            self.reference = np.asarray(share.reference, dtype=np.int64)
        if share.values is not None:
            if self.values is not None:
                self.values[partition] = list(share.values)
            else:
                self._hist(partition).update(np.asarray(share.values, dtype=np.float64))
        elif share.predictions is not None and self.values is None:
            hist = self._hist(partition)
            hist.counts[:] = np.asarray(share.predictions, dtype=np.int64)

    def drop(self, partitions: set[int]) -> None:
        """Forget the counts of ``partitions``."""
        for k in partitions:
            self.parts.pop(k, None)
            if self.values is not None:
                self.values.pop(k, None)


def _as_float(value: Any) -> float:
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")  # a score that is not a number cannot be binned


class VersionDrift:
    """Tumbling-window drift of one model version.

    Rows are counted per stream partition (their sum is the window), so each partition's
    share of the open window can be snapshotted (:meth:`share`) and restored
    (:meth:`restore`); ``opened``, the stamp of the window's start, tells a restored share
    of the open window from a stale one of a window closed since.

    Args:
        contract: the model's data contract (values are converted as for training).
        profile: the reference profile of the version's training data.
        window_rows: rows per window.
        psi_threshold: a feature whose PSI exceeds this is reported as drifted.
        wasserstein_threshold: so is a numeric feature whose normed Wasserstein distance
            reaches this (it sees small shifts that PSI misses).
        stamps: stamps the windows' starts (the core shares one).
    """

    def __init__(
        self,
        contract: Contract,
        profile: Profile,
        window_rows: int,
        psi_threshold: float,
        wasserstein_threshold: float,
        stamps: Stamps | None = None,
    ):
        self.contract = contract
        self.profile = profile
        self.window_rows = window_rows
        self.psi_threshold = psi_threshold
        self.wasserstein_threshold = wasserstein_threshold
        known = set(contract.feature_names)
        self.features = [f for f in (*profile.numeric, *profile.categories) if f in known]
        self.parts: dict[int, dict[str, StreamingHistogram]] = {}
        """Partition -> feature -> counts on the reference bins (O(bins) each)."""
        self.part_rows: Counter[int] = Counter()
        self.predictions = PredictionHistogram(contract)
        self.stamps = stamps or Stamps()
        self.opened = self.stamps()

    @property
    def rows(self) -> int:
        """Rows in the open window."""
        return sum(self.part_rows.values())

    def add(
        self, inputs: Sequence[Mapping[str, Any]], predictions: Sequence[Any], partition: int = 0
    ) -> list[WindowReport]:
        """Count rows of one partition (their inputs and :func:`prediction_value`); a
        report for every window they complete."""
        reports: list[WindowReport] = []
        start = 0
        while start < len(inputs):
            if self.rows >= self.window_rows:  # overfull by a restored share
                reports.append(self._close())
            take = min(self.window_rows - self.rows, len(inputs) - start)
            end = start + take
            self._count(inputs[start:end], predictions[start:end], partition)
            self.part_rows[partition] += take
            start = end
            if self.rows >= self.window_rows:
                reports.append(self._close())
        return reports

    def _hists(self, partition: int) -> dict[str, StreamingHistogram]:
        if partition not in self.parts:
            self.parts[partition] = {f: reference_counts(self.profile, f)[1] for f in self.features}
        return self.parts[partition]

    def _count(
        self, rows: Sequence[Mapping[str, Any]], predictions: Sequence[Any], partition: int
    ) -> None:
        # The same conversion as the training frame the profile was built from.
        frame = to_frame(
            self.contract, {f: [r.get(f) for r in rows] for f in self.contract.feature_names}
        )
        for f, hist in self._hists(partition).items():
            hist.update(frame[f].to_numpy())
        self.predictions.update(predictions, partition)

    def _close(self) -> WindowReport:
        per_feature = {}
        for f in self.features:
            hists = [h[f] for h in self.parts.values()]
            counts = np.sum([h.counts for h in hists], axis=0)
            sums = np.sum([h.sums for h in hists], axis=0)
            per_feature[f] = feature_scores(self.profile, f, counts, sums)
        drifted = [
            f
            for f, s in per_feature.items()
            if s["psi"] > self.psi_threshold
            or s.get("wasserstein", 0.0) >= self.wasserstein_threshold
        ]
        prediction_drift = self.predictions.close()
        report = WindowReport(self.rows, per_feature, prediction_drift, drifted)
        self.parts.clear()
        self.part_rows.clear()
        self.opened = self.stamps()
        return report

    def share(self, partition: int) -> DriftShare:
        """Partition ``partition``'s share of the open window."""
        hists = self.parts.get(partition, {})
        return DriftShare(
            opened=self.opened,
            rows=self.part_rows[partition],
            counts={f: h.counts.tolist() for f, h in hists.items()},
            sums={f: h.sums.tolist() for f, h in hists.items()},
            **self.predictions.share(partition),
        )

    def restore(self, partition: int, share: DriftShare) -> None:
        """Put back a share of the open window (a share of the same ``opened`` as every
        other restored one: the caller leaves out stale shares)."""
        if not self.part_rows and not self.parts:
            self.opened = share.opened  # a fresh window: it is the restored one
        self.stamps.observe(share.opened)
        hists = self._hists(partition)
        for f, hist in hists.items():
            if f in share.counts:
                hist.counts[:] = np.asarray(share.counts[f], dtype=np.int64)
                hist.sums[:] = np.asarray(share.sums[f], dtype=np.float64)
        self.part_rows[partition] = share.rows
        self.predictions.restore(partition, share)

    def drop(self, partitions: set[int]) -> None:
        """Forget the counts of ``partitions`` (now another replica's)."""
        for k in partitions:
            self.parts.pop(k, None)
            self.part_rows.pop(k, None)
        self.predictions.drop(partitions)
