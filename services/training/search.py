"""The time-boxed model search: a few families, cross-validated, every candidate a run.

Candidates run in a fixed order. The minimum search — the first linear candidate, the
first boosting candidate and their soft-voting ensemble — always runs, so even a tiny
budget compares the families and the ensemble; the remaining grid points (alternating
families) run only while the budget lasts — a grid point expected to end past it is left
out, a cheaper one after it may still run — and the ones left out are recorded.

Two things keep the search cheap on large data. As AutoML systems do (FLAML searches on
a 10,000-row sample first, successive halving on a share of the rows), candidates are
cross-validated on at most ``training.search_max_rows`` training rows, a seeded
label-stratified sample, and the trainer refits the winner on every training row. And
the ensemble is scored on its members' fold fits rather than fitted again: soft voting
fits each member on a fold exactly as the member's own cross-validation did (same rows,
same seed), so the scores are the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import get_scorer
from sklearn.model_selection import KFold, StratifiedKFold, cross_validate, train_test_split
from sklearn.pipeline import Pipeline

from shared.contract import Contract
from shared.features import build_pipeline

from .cpu import cpu_threads
from .estimators import BOOSTING, GRIDS, LINEAR, VOTING, describe, make_estimator
from .folds import Splits, time_folds
from .scoring import Scoring, cv_scoring, higher_is_better


class RunCancelled(Exception):
    """The service is stopping: the run was abandoned between two steps."""


class StopSignal(Protocol):
    """What a run looks at between steps: a ``threading.Event`` or :class:`AnyOf`."""

    def is_set(self) -> bool:
        """True once the run should stop."""
        ...


class AnyOf:
    """A stop signal set when any of its signals is."""

    def __init__(self, *signals: StopSignal | None):
        self.signals = [s for s in signals if s is not None]

    def is_set(self) -> bool:
        """True when one of the signals is set."""
        return any(s.is_set() for s in self.signals)


def check_cancel(cancel: StopSignal | None) -> None:
    """Raise :class:`RunCancelled` if ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise RunCancelled("training stopped: the service is shutting down")


@dataclass
class Run:
    """One candidate of the search (a row of the experiment log)."""

    family: str
    params: dict[str, Any]
    cv_scores: list[float]
    cv_mean: float
    cv_std: float
    seconds: float
    status: str = "ok"
    error: str | None = None
    name: str = field(default="")
    note: str | None = None
    """How the scores were obtained when it is not a plain cross-validation."""

    def as_record(self) -> dict[str, Any]:
        """The JSON form stored with the model's runs."""
        return {
            "name": self.name or describe(self.family, self.params),
            "family": self.family,
            "params": self.params,
            "cv_scores": self.cv_scores,
            "cv_mean": self.cv_mean,
            "cv_std": self.cv_std,
            "seconds": round(self.seconds, 4),
            "status": self.status,
            "error": self.error,
            "note": self.note,
        }


@dataclass
class SearchResult:
    """Every run, the winner, and whether the budget cut the search short."""

    runs: list[Run]
    best: Run
    metric: str
    budget_s: float
    exhausted: bool
    not_run: list[str] = field(default_factory=list)
    """Grid points the budget left out."""
    rows: int = 0
    """Training rows the candidates were cross-validated on."""
    max_rows: int | None = None
    """The cap on those rows (``training.search_max_rows``)."""
    sample: str = ""
    """How those rows were chosen, in words."""
    cv: str = ""
    """How the cross-validation folds were made, in words (time-ordered or why not)."""


def _scorer(contract: Contract, metric: str) -> Scoring:
    return cv_scoring(metric, contract.label.classes or [])


def _folds(contract: Contract, folds: int, seed: int) -> KFold | StratifiedKFold:
    if contract.task == "classification":
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def cv_splits(
    contract: Contract,
    x: pd.DataFrame,
    y: np.ndarray,
    *,
    folds: int,
    seed: int,
    times: np.ndarray | None = None,
) -> tuple[Splits, str]:
    """The search's folds and how they were made.

    Time-ordered folds (:func:`~services.training.folds.time_folds`) when the rows have
    event times and those folds can be used; else shuffled folds (stratified for
    classification), the description saying why.
    """
    if times is not None:
        splits, words = time_folds(
            times, y, folds=folds, classification=contract.task == "classification"
        )
        if splits is not None:
            return splits, words
        why = words
    else:
        why = "the rows have no event time"
    shuffled = list(_folds(contract, folds, seed).split(x, y))
    kind = "stratified " if contract.task == "classification" else ""
    return shuffled, f"{folds} shuffled {kind}folds, not time-ordered: {why}"


def _ordered_candidates() -> list[tuple[str, dict[str, Any]]]:
    pairs = zip_longest(
        [(LINEAR, p) for p in GRIDS[LINEAR]], [(BOOSTING, p) for p in GRIDS[BOOSTING]]
    )
    return [c for pair in pairs for c in pair if c is not None]


def search_rows(
    contract: Contract, x: pd.DataFrame, y: np.ndarray, *, max_rows: int | None, seed: int
) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The rows the search cross-validates on, and how they were chosen.

    Every training row when there are at most ``max_rows`` of them; otherwise a seeded
    sample of ``max_rows``, stratified by label for classification, spread over the whole
    training period and kept in its (event-time) order.
    """
    picked, words = _sample(contract, y, max_rows=max_rows, seed=seed)
    if picked is None:
        return x, y, words
    return x.iloc[picked], y[picked], words


def _sample(
    contract: Contract, y: np.ndarray, *, max_rows: int | None, seed: int
) -> tuple[np.ndarray | None, str]:
    """Positions of the search rows in time order (None: every row), and the words."""
    n = len(y)
    if max_rows is None or n <= max_rows:
        return None, f"all {n} training rows"
    # Stratifying needs two rows of every class; a rarer class is left to chance.
    stratified = (
        contract.task == "classification" and int(np.unique(y, return_counts=True)[1].min()) >= 2
    )
    picked, _ = train_test_split(
        np.arange(n), train_size=max_rows, stratify=y if stratified else None, random_state=seed
    )
    words = f"a seeded sample of {max_rows} of the {n} training rows" + (
        ", stratified by label" if stratified else ""
    )
    return np.sort(picked), words


def _failed(family: str, params: dict[str, Any], started: float, err: Exception) -> Run:
    seconds = time.perf_counter() - started
    return Run(family, params, [], float("nan"), float("nan"), seconds, "failed", repr(err))


def _scored(
    family: str, params: dict[str, Any], scores: list[float], scoring: Scoring, started: float
) -> Run:
    # Sign-flip sklearn's neg_* scorers so every recorded score reads as the metric itself.
    sign = -1.0 if isinstance(scoring, str) and scoring.startswith("neg_") else 1.0
    values = [float(sign * s) for s in scores]
    seconds = time.perf_counter() - started
    return Run(family, params, values, float(np.mean(values)), float(np.std(values)), seconds)


def _cross_validate(
    contract: Contract,
    family: str,
    params: dict[str, Any],
    x: pd.DataFrame,
    y: np.ndarray,
    *,
    metric: str,
    folds: int,
    seed: int,
    times: np.ndarray | None = None,
) -> tuple[Run, list[Pipeline]]:
    started = time.perf_counter()
    scoring = _scorer(contract, metric)
    pipeline = build_pipeline(contract, make_estimator(contract.task, family, params, seed))
    splits, _ = cv_splits(contract, x, y, folds=folds, seed=seed, times=times)
    try:
        result = cross_validate(
            pipeline,
            x,
            y,
            cv=splits,
            scoring=scoring,
            error_score="raise",
            return_estimator=True,
        )
    except (ValueError, ArithmeticError) as err:
        return _failed(family, params, started, err), []
    run = _scored(family, params, list(result["test_score"]), scoring, started)
    return run, list(result["estimator"])


def _cross_validate_in_worker(
    threads: int | None, keep: bool, *args: Any, **kwargs: Any
) -> tuple[Run, list[Pipeline]]:
    """:func:`_cross_validate` (same arguments) in the search's worker process; the fold
    fits are sent back only when ``keep`` (the ensemble reuses the first two
    candidates')."""
    with cpu_threads(threads):
        run, fits = _cross_validate(*args, **kwargs)
    return run, fits if keep else []


def evaluate_candidate(
    contract: Contract,
    family: str,
    params: dict[str, Any],
    x: pd.DataFrame,
    y: np.ndarray,
    *,
    metric: str,
    folds: int,
    seed: int,
    times: np.ndarray | None = None,
) -> Run:
    """Cross-validate one candidate; a failing candidate is a run with ``status=failed``.

    ``times``: the rows' event times, for time-ordered folds (see :func:`cv_splits`).
    """
    run, _ = _cross_validate(
        contract, family, params, x, y, metric=metric, folds=folds, seed=seed, times=times
    )
    return run


def evaluate_ensemble(
    contract: Contract,
    params: dict[str, Any],
    member_fits: list[list[Pipeline]],
    x: pd.DataFrame,
    y: np.ndarray,
    *,
    metric: str,
    folds: int,
    seed: int,
    times: np.ndarray | None = None,
) -> Run:
    """Cross-validate the soft-voting ensemble ``params`` on its members' fold fits.

    Args:
        contract: the data contract.
        params: the ensemble's params (``members``: ``[family, params]`` pairs).
        member_fits: per member, in order, its pipelines fitted on each fold by the
            cross-validation of the same ``x``, ``y``, ``folds`` and ``seed``.
        x: the rows that cross-validation ran on.
        y: their labels.
        metric: the primary metric.
        folds: cross-validation folds.
        seed: seed of the folds and the estimators.
        times: the rows' event times, as given to the members' cross-validation.

    A voting ensemble fits each member on the fold's rows exactly as the member's own
    cross-validation did, so the members are reused (frozen) rather than refitted: the
    scores are those of cross-validating the ensemble, at the cost of predicting.
    """
    started = time.perf_counter()
    family = VOTING
    scoring = _scorer(contract, metric)
    scorer = get_scorer(scoring)
    scores: list[float] = []
    try:
        splits, _ = cv_splits(contract, x, y, folds=folds, seed=seed, times=times)
        for k, (train, test) in enumerate(splits):
            ensemble = make_estimator(contract.task, family, params, seed)
            frozen = [
                (name, FrozenEstimator(fits[k]))
                for (name, _), fits in zip(ensemble.estimators, member_fits, strict=True)
            ]
            # fit() only encodes the labels: frozen members are not fitted again.
            ensemble.set_params(estimators=frozen).fit(x.iloc[train], y[train])
            scores.append(float(scorer(ensemble, x.iloc[test], y[test])))
    except (ValueError, ArithmeticError) as err:
        return _failed(family, params, started, err)
    run = _scored(family, params, scores, scoring, started)
    run.note = "scored on its members' fold fits (same folds and seeds), not refitted"
    return run


def _cost(family: str, params: dict[str, Any]) -> float:
    """The relative cost of fitting a candidate within its family.

    Gradient boosting builds ``max_iter`` trees whose split finding grows with the
    leaves (measured here: 200 trees of 15 leaves took 1.25x the time of 100 of 31, 200
    of 63 leaves 2.5x that of 200 of 15; ``max_iter * sqrt(leaves)`` gives 1.4x and 2.0x).
    A linear model's cost barely depends on ``C``.
    """
    if family == BOOSTING:
        return float(params["max_iter"]) * math.sqrt(float(params["max_leaf_nodes"]))
    return 1.0


def expected_seconds(family: str, params: dict[str, Any], runs: list[Run]) -> float:
    """How long cross-validating a candidate should take: the family's latest completed
    run scaled by :func:`_cost` (0 when none of the family ran)."""
    done = [r for r in runs if r.family == family and r.status == "ok"]
    if not done:
        return 0.0
    last = done[-1]
    return float(last.seconds) * _cost(family, params) / _cost(family, last.params)


def search(
    contract: Contract,
    x: pd.DataFrame,
    y: np.ndarray,
    *,
    budget_s: float,
    folds: int,
    seed: int,
    max_rows: int | None = None,
    cancel: StopSignal | None = None,
    times: np.ndarray | None = None,
    on_leader: Callable[[str, dict[str, Any]], None] | None = None,
    executor: Executor | None = None,
    threads: int | None = None,
) -> SearchResult:
    """Run the time-boxed search on the training rows.

    Args:
        contract: the data contract (task, primary metric, preprocessing).
        x: training features (from :func:`shared.features.table_to_frame`).
        y: training labels.
        budget_s: launch no candidate after this many seconds, nor one expected
            (:func:`expected_seconds`) to end after them.
        folds: cross-validation folds.
        seed: seed of the folds, the row sample and the estimators.
        max_rows: cross-validate on at most this many rows (see :func:`search_rows`);
            None: on all of them.
        cancel: when set, :class:`RunCancelled` is raised before the next candidate.
        times: the training rows' event times (``Split.t_train``): the folds then
            train on the past and validate on the future (see :func:`cv_splits`).
        on_leader: called with (family, params) each time a candidate takes the lead
            (the trainer finishes the leader ahead of the search's end, :mod:`.ahead`).
        executor: cross-validates each candidate there (the search's worker process,
            :func:`.cpu.search_process`); None: in the calling thread.
        threads: the OpenMP/BLAS thread limit in ``executor``'s worker.
    """
    metric = contract.promotion.primary_metric
    better = higher_is_better(metric)
    picked, sample = _sample(contract, y, max_rows=max_rows, seed=seed)
    if picked is not None:
        x, y = x.iloc[picked], y[picked]
        times = None if times is None else times[picked]
    _, cv = cv_splits(contract, x, y, folds=folds, seed=seed, times=times)

    def run(family: str, params: dict[str, Any], keep: bool) -> tuple[Run, list[Pipeline]]:
        check_cancel(cancel)
        args = (contract, family, params, x, y)
        kwargs: dict[str, Any] = {"metric": metric, "folds": folds, "seed": seed, "times": times}
        if executor is None:
            return _cross_validate(*args, **kwargs)
        return executor.submit(_cross_validate_in_worker, threads, keep, *args, **kwargs).result()

    def pick(pool: list[Run]) -> Run | None:
        pool = [r for r in pool if r.status == "ok"]
        if not pool:
            return None
        return max(pool, key=lambda r: r.cv_mean) if better else min(pool, key=lambda r: r.cv_mean)

    started = time.perf_counter()
    runs: list[Run] = []
    not_run: list[str] = []
    leader: Run | None = None

    def record(result: Run) -> None:
        nonlocal leader
        runs.append(result)
        now = pick(runs)
        if now is not None and now is not leader:
            leader = now
            if on_leader is not None:
                on_leader(now.family, now.params)

    first_fits: dict[str, list[Pipeline]] = {}
    order = _ordered_candidates()
    for i, (family, params) in enumerate(order):
        if i >= 2:
            elapsed = time.perf_counter() - started
            if elapsed > budget_s:
                not_run += [describe(f, p) for f, p in order[i:]]
                break
            expected = expected_seconds(family, params, runs)
            if elapsed + expected > budget_s:
                # It would end past the budget: the next, maybe cheaper, one may fit.
                not_run.append(
                    f"{describe(family, params)}: expected {expected:.1f} s, "
                    f"{budget_s - elapsed:.1f} s of the budget left"
                )
                continue
        result, fits = run(family, params, i < 2)
        record(result)
        if i < 2:
            first_fits[family] = fits
        if i == 1:
            # The ensemble of the first linear and boosting candidates is part of the
            # minimum search (one candidate per family); the budget bounds the rest.
            linear = pick([r for r in runs if r.family == LINEAR])
            boosting = pick([r for r in runs if r.family == BOOSTING])
            if linear is not None and boosting is not None:
                check_cancel(cancel)
                members = [[LINEAR, linear.params], [BOOSTING, boosting.params]]
                fitted = [first_fits[LINEAR], first_fits[BOOSTING]]
                record(
                    evaluate_ensemble(
                        contract,
                        {"members": members},
                        fitted,
                        x,
                        y,
                        metric=metric,
                        folds=folds,
                        seed=seed,
                        times=times,
                    )
                )
            first_fits.clear()
    best = pick(runs)
    if best is None:
        raise RuntimeError(
            "every search candidate failed: " + "; ".join(str(r.error) for r in runs)
        )
    return SearchResult(
        runs, best, metric, budget_s, bool(not_run), not_run, len(y), max_rows, sample, cv
    )
