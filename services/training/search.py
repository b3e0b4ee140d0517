"""The time-boxed model search: a few families, cross-validated, every candidate a run.

Candidates run in a fixed order. The minimum search — the first linear candidate, the
first boosting candidate and their soft-voting ensemble — always runs, so even a tiny
budget compares the families and the ensemble; the remaining grid points (alternating
families) run only while the budget lasts, and the ones left out are recorded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, cross_validate

from shared.contract import Contract
from shared.features import build_pipeline

from .estimators import BOOSTING, GRIDS, LINEAR, VOTING, describe, make_estimator
from .scoring import CV_SCORERS, higher_is_better


class RunCancelled(Exception):
    """The service is stopping: the run was abandoned between two steps."""


def check_cancel(cancel: threading.Event | None) -> None:
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


def _scorer(contract: Contract, metric: str) -> str:
    if metric == "roc_auc" and len(contract.label.classes or []) == 2:
        return "roc_auc"
    if metric not in CV_SCORERS:
        raise ValueError(f"primary metric {metric!r} has no cross-validation scorer")
    return CV_SCORERS[metric]


def _folds(contract: Contract, folds: int, seed: int) -> KFold | StratifiedKFold:
    if contract.task == "classification":
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def _ordered_candidates() -> list[tuple[str, dict[str, Any]]]:
    pairs = zip_longest(
        [(LINEAR, p) for p in GRIDS[LINEAR]], [(BOOSTING, p) for p in GRIDS[BOOSTING]]
    )
    return [c for pair in pairs for c in pair if c is not None]


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
) -> Run:
    """Cross-validate one candidate; a failing candidate is a run with ``status=failed``."""
    started = time.perf_counter()
    pipeline = build_pipeline(contract, make_estimator(contract.task, family, params, seed))
    # Sign-flip sklearn's neg_* scorers so every recorded score reads as the metric itself.
    sign = -1.0 if _scorer(contract, metric).startswith("neg_") else 1.0
    try:
        scores = cross_validate(
            pipeline,
            x,
            y,
            cv=_folds(contract, folds, seed),
            scoring=_scorer(contract, metric),
            error_score="raise",
        )["test_score"]
    except (ValueError, ArithmeticError) as err:
        return Run(
            family,
            params,
            [],
            float("nan"),
            float("nan"),
            time.perf_counter() - started,
            "failed",
            repr(err),
        )
    values = [float(sign * s) for s in scores]
    return Run(
        family,
        params,
        values,
        float(np.mean(values)),
        float(np.std(values)),
        time.perf_counter() - started,
    )


def search(
    contract: Contract,
    x: pd.DataFrame,
    y: np.ndarray,
    *,
    budget_s: float,
    folds: int,
    seed: int,
    cancel: threading.Event | None = None,
) -> SearchResult:
    """Run the time-boxed search on the training rows.

    Args:
        contract: the data contract (task, primary metric, preprocessing).
        x: training features (from :func:`shared.features.table_to_frame`).
        y: training labels.
        budget_s: stop launching candidates after this many seconds.
        folds: cross-validation folds.
        seed: seed of the folds and the estimators.
        cancel: when set, :class:`RunCancelled` is raised before the next candidate.
    """
    metric = contract.promotion.primary_metric
    better = higher_is_better(metric)

    def run(family: str, params: dict[str, Any]) -> Run:
        check_cancel(cancel)
        return evaluate_candidate(
            contract, family, params, x, y, metric=metric, folds=folds, seed=seed
        )

    def pick(pool: list[Run]) -> Run | None:
        pool = [r for r in pool if r.status == "ok"]
        if not pool:
            return None
        return max(pool, key=lambda r: r.cv_mean) if better else min(pool, key=lambda r: r.cv_mean)

    started = time.perf_counter()
    runs: list[Run] = []
    not_run: list[str] = []
    order = _ordered_candidates()
    for i, (family, params) in enumerate(order):
        if i >= 2 and time.perf_counter() - started > budget_s:
            not_run = [describe(f, p) for f, p in order[i:]]
            break
        runs.append(run(family, params))
        if i == 1:
            # The ensemble of the first linear and boosting candidates is part of the
            # minimum search (one candidate per family); the budget bounds the rest.
            linear = pick([r for r in runs if r.family == LINEAR])
            boosting = pick([r for r in runs if r.family == BOOSTING])
            if linear is not None and boosting is not None:
                members = [[LINEAR, linear.params], [BOOSTING, boosting.params]]
                runs.append(run(VOTING, {"members": members}))
    best = pick(runs)
    if best is None:
        raise RuntimeError(
            "every search candidate failed: " + "; ".join(str(r.error) for r in runs)
        )
    return SearchResult(runs, best, metric, budget_s, bool(not_run), not_run)
