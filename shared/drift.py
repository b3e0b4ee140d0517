"""Reference profiles and drift statistics, with bounded memory.

A :class:`Profile` summarises a dataset version: per numeric feature, quantile bin
edges with their counts plus a robust range; per category, value counts; and the
label distribution. Drift of new data is measured *on the reference bins*
(:class:`StreamingHistogram`), so a window of any size costs O(bins) memory:

- numeric: PSI, a two-sample KS statistic computed on the binned CDFs, and the
  normed Wasserstein-1 distance (:func:`wasserstein_binned`) computed from per-bin
  counts and sums;
- categorical: Jensen-Shannon distance and a chi-square test p-value.

KS on bins is a lower bound of the exact statistic (it can only miss differences
inside one bin); with 20 quantile bins that is what Evidently's and NannyML's
binned drift methods accept too. PSI is blind to small shifts (0.15 std moves
little mass across quantile edges); the normed Wasserstein distance, which
Evidently uses by default on numeric columns, is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats
from scipy.spatial.distance import jensenshannon

from shared.contract import Contract
from shared.events import DriftSummary

N_BINS = 20
EPS = 1e-4
"""Floor for empty-bin shares in PSI (the usual convention)."""
WASSERSTEIN_MIN_STD = 1e-3
"""Floor of the reference std that norms the Wasserstein distance (Evidently's)."""


class NumericProfile(BaseModel):
    """Quantile bins of a numeric feature and its robust range."""

    model_config = ConfigDict(frozen=True)

    edges: list[float]
    """Inner bin edges; bins are (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    counts: list[int]
    bin_means: list[float] | None = None
    """Mean of the reference values in each bin (one per count); None in profiles
    stored before the Wasserstein score existed, which then get no such score."""
    nulls: int = 0
    mean: float
    std: float
    q01: float
    q99: float
    low: float
    """Lower end of the robust range: q01 - 1.5 * (q99 - q01)."""
    high: float
    """Upper end of the robust range: q99 + 1.5 * (q99 - q01)."""


class CategoryProfile(BaseModel):
    """Value counts of a category feature."""

    model_config = ConfigDict(frozen=True)

    counts: dict[str, int]


class Profile(BaseModel):
    """The reference profile of a dataset version."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    rows: int
    numeric: dict[str, NumericProfile] = Field(default_factory=dict)
    categories: dict[str, CategoryProfile] = Field(default_factory=dict)
    label: dict[str, int] = Field(default_factory=dict)
    """Class -> count (classification) or a binned numeric label (regression)."""
    score_edges: list[float] | None = None
    """Bin edges of the model's score, filled for prediction drift."""


def _numeric_profile(values: np.ndarray) -> NumericProfile:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        finite = np.zeros(1)
    qs = np.quantile(finite, np.linspace(0, 1, N_BINS + 1)[1:-1])
    edges = np.unique(qs)
    counts, sums = bin_counts(edges, finite)
    q01, q99 = np.quantile(finite, [0.01, 0.99])
    spread = float(q99 - q01)
    return NumericProfile(
        edges=[float(e) for e in edges],
        counts=[int(c) for c in counts],
        bin_means=[float(m) for m in _bin_means(counts, sums, edges)],
        nulls=int(values.size - finite.size),
        mean=float(finite.mean()),
        std=float(finite.std()),
        q01=float(q01),
        q99=float(q99),
        low=float(q01 - 1.5 * spread),
        high=float(q99 + 1.5 * spread),
    )


def _bin_means(counts: np.ndarray, sums: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # An empty bin carries no weight; its atom sits on its lower edge to keep them ordered.
    fill = np.concatenate([edges[:1], edges])
    return np.where(counts > 0, sums / np.maximum(counts, 1), fill)


def _value_counts(values: np.ndarray) -> dict[str, int]:
    uniq, counts = np.unique(values.astype(str), return_counts=True)
    return {str(u): int(c) for u, c in zip(uniq, counts, strict=True)}


def build_profile(
    contract: Contract, frame: pd.DataFrame, labels: np.ndarray | None = None
) -> Profile:
    """Profile ``frame`` (made by :func:`shared.features.to_frame`) and its labels."""
    numeric: dict[str, NumericProfile] = {}
    cats: dict[str, CategoryProfile] = {}
    for f in contract.features:
        col = frame[f.name].to_numpy()
        if f.is_numeric:
            numeric[f.name] = _numeric_profile(col.astype(np.float64))
        else:
            cats[f.name] = CategoryProfile(counts=_value_counts(col))
    label = _value_counts(np.asarray(labels)) if labels is not None else {}
    return Profile(
        dataset=contract.name, rows=len(frame), numeric=numeric, categories=cats, label=label
    )


def bin_counts(
    edges: list[float] | np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Counts and sums of ``values`` (NaN ignored) in the bins defined by ``edges``.

    An infinite value counts in its outer bin but is left out of the sums: it would turn
    the bin's mean (and the Wasserstein score built on it) into inf or nan.
    """
    values = values[~np.isnan(values)]
    size = len(edges) + 1
    idx = np.searchsorted(np.asarray(edges), values, side="left")
    finite = np.isfinite(values)
    counts = np.bincount(idx, minlength=size)
    return counts, np.bincount(idx[finite], weights=values[finite], minlength=size)


def psi(ref: np.ndarray, cur: np.ndarray) -> float:
    """Population stability index between two count vectors over the same bins."""
    if ref.sum() == 0 or cur.sum() == 0:
        return 0.0
    p = np.clip(ref / ref.sum(), EPS, None)
    q = np.clip(cur / cur.sum(), EPS, None)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_binned(ref: np.ndarray, cur: np.ndarray) -> float:
    """Two-sample KS statistic on binned counts (largest CDF gap at bin edges)."""
    if ref.sum() == 0 or cur.sum() == 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(ref) / ref.sum() - np.cumsum(cur) / cur.sum())))


def wasserstein_binned(
    ref_counts: np.ndarray,
    ref_means: np.ndarray,
    cur_counts: np.ndarray,
    cur_sums: np.ndarray,
    ref_std: float,
) -> float:
    """Normed Wasserstein-1 distance from per-bin counts and means (O(bins)).

    Each sample is replaced by its bins' atoms: mass ``count / total`` placed at the
    mean of that sample's values in the bin. Replacing a bin's values by their mean
    keeps the integral of the CDF over the bin, so ``W1 = integral |F_ref - F_cur|``
    comes out exact whenever, inside every bin, one sample lies to the left of the
    other (its CDF above and its bin mean below, as under a shift of a normal); it errs
    only in bins where that fails: where the CDFs cross, or sampling noise dominates.
    Normed like Evidently's "Wasserstein distance (normed)": divided by the reference
    std, floored at 0.001 as Evidently does.

    Measured against ``scipy.stats.wasserstein_distance(ref, cur) / std(ref)`` on
    ``bench.drift.make_data`` (100k-row reference, 15 numeric features, windows of 10k
    and 100k rows, 30 pairs): largest absolute error 0.0056; relative error at most 0.3%
    on the strongly drifted features (W 0.79-1.15) and 3.7% on the 0.15-std shift
    (0.1557 for 0.1500); undrifted features (exact 0.004-0.026) read up to 0.0056 high,
    as sampling noise makes the CDFs cross inside bins. Far from the 0.1 threshold.

    Args:
        ref_counts: reference counts per bin.
        ref_means: mean of the reference values in each bin.
        cur_counts: current counts per bin (the same bins).
        cur_sums: sum of the current values in each bin.
        ref_std: standard deviation of the reference values.
    """
    if ref_counts.sum() == 0 or cur_counts.sum() == 0:
        return 0.0
    cur_means = np.where(cur_counts > 0, cur_sums / np.maximum(cur_counts, 1), ref_means)
    distance = stats.wasserstein_distance(ref_means, cur_means, ref_counts, cur_counts)
    return float(distance / max(ref_std, WASSERSTEIN_MIN_STD))


def js_distance(ref: np.ndarray, cur: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two count vectors."""
    if ref.sum() == 0 or cur.sum() == 0:
        return 0.0
    return float(jensenshannon(ref / ref.sum(), cur / cur.sum(), base=2))


def chi2_pvalue(ref: np.ndarray, cur: np.ndarray) -> float:
    """p-value of a chi-square test that ``cur`` follows ``ref``'s distribution."""
    keep = (ref + cur) > 0
    if cur.sum() == 0 or keep.sum() < 2:
        return 1.0
    table = np.vstack([ref[keep], cur[keep]])
    _, p, _, _ = stats.chi2_contingency(table)
    return float(p)


class StreamingHistogram:
    """Counts of a stream of values on fixed reference bins (bounded memory).

    Numeric features use the reference's bin edges and also sum the values per bin
    (for the Wasserstein score); categories use the reference's vocabulary plus an
    ``other`` slot for values the reference never saw.
    """

    def __init__(self, edges: list[float] | None = None, vocab: list[str] | None = None):
        if (edges is None) == (vocab is None):
            raise ValueError("give edges (numeric) or vocab (category)")
        self.edges = edges
        self.vocab = vocab
        self._index = {v: i for i, v in enumerate(vocab or [])}
        size = len(edges) + 1 if edges is not None else len(vocab or []) + 1
        self.counts = np.zeros(size, dtype=np.int64)
        self.sums = np.zeros(size, dtype=np.float64)
        """Sum of the finite values per bin (numeric only)."""

    def update(self, values: Any) -> None:
        """Add a batch of values."""
        if self.edges is not None:
            counts, sums = bin_counts(self.edges, np.asarray(values, dtype=np.float64))
            self.counts += counts
            self.sums += sums
        else:
            other = len(self._index)
            codes = [self._index.get(str(v), other) for v in values]
            self.counts += np.bincount(np.asarray(codes, dtype=np.int64), minlength=other + 1)

    def reset(self) -> None:
        """Start a new window."""
        self.counts[:] = 0
        self.sums[:] = 0.0

    @property
    def total(self) -> int:
        """Values counted in this window."""
        return int(self.counts.sum())


def reference_counts(profile: Profile, feature: str) -> tuple[np.ndarray, StreamingHistogram]:
    """The reference counts of ``feature`` and an empty histogram on the same bins."""
    if feature in profile.numeric:
        num = profile.numeric[feature]
        return np.asarray(num.counts), StreamingHistogram(edges=num.edges)
    cat = profile.categories[feature]
    vocab = sorted(cat.counts)
    ref = np.asarray([cat.counts[v] for v in vocab] + [0])
    return ref, StreamingHistogram(vocab=vocab)


def feature_scores(
    profile: Profile, feature: str, cur: np.ndarray, sums: np.ndarray | None = None
) -> dict[str, float]:
    """Drift scores of one feature: psi+ks+wasserstein (numeric) or psi+js+chi2_p (category).

    Args:
        profile: the reference profile.
        feature: the feature's name.
        cur: the current window's counts on the reference bins.
        sums: the current window's per-bin sums (:attr:`StreamingHistogram.sums`);
            without them, or with a profile that has no bin means, there is no
            ``wasserstein`` score.
    """
    ref, _ = reference_counts(profile, feature)
    if feature in profile.numeric:
        num = profile.numeric[feature]
        scores = {"psi": psi(ref, cur), "ks": ks_binned(ref, cur)}
        if sums is not None and num.bin_means is not None:
            means = np.asarray(num.bin_means)
            scores["wasserstein"] = wasserstein_binned(ref, means, cur, sums, num.std)
        return scores
    return {"psi": psi(ref, cur), "js": js_distance(ref, cur), "chi2_p": chi2_pvalue(ref, cur)}


def is_drifted(
    scores: Mapping[str, float],
    psi_threshold: float,
    ks_threshold: float,
    js_threshold: float,
    wasserstein_threshold: float,
) -> bool:
    """The drift verdict for one feature's scores: any score beyond its threshold.

    PSI, KS and JS count when above their thresholds; the normed Wasserstein distance
    when at or above its threshold, as Evidently decides.
    """
    if scores.get("psi", 0.0) > psi_threshold:
        return True
    if "ks" in scores and scores["ks"] > ks_threshold:
        return True
    if "wasserstein" in scores and scores["wasserstein"] >= wasserstein_threshold:
        return True
    return "js" in scores and scores["js"] > js_threshold


def compare(
    contract: Contract, profile: Profile, frame: pd.DataFrame, labels: np.ndarray | None = None
) -> DriftSummary:
    """Drift of ``frame`` against ``profile`` with the contract's validation thresholds."""
    pol = contract.validation
    scores: dict[str, dict[str, float]] = {}
    drifted: list[str] = []
    for f in contract.features:
        _, hist = reference_counts(profile, f.name)
        col = frame[f.name].to_numpy()
        hist.update(col)
        scores[f.name] = feature_scores(profile, f.name, hist.counts, hist.sums)
        if is_drifted(
            scores[f.name],
            pol.psi_threshold,
            pol.ks_threshold,
            pol.js_threshold,
            pol.wasserstein_threshold,
        ):
            drifted.append(f.name)
    label_drift = None
    if labels is not None and profile.label:
        vocab = sorted(profile.label)
        ref = np.asarray([profile.label[v] for v in vocab] + [0])
        hist = StreamingHistogram(vocab=vocab)
        hist.update(np.asarray(labels).astype(str))
        label_drift = js_distance(ref, hist.counts)
    return DriftSummary(
        drifted=bool(drifted),
        features=scores,
        drifted_features=drifted,
        label_drift=label_drift,
    )
