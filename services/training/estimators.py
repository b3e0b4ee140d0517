"""Estimator families the search tries, rebuilt from (family, params, seed).

A manifest records ``estimator`` (the family) and ``params``; :func:`make_estimator`
turns them back into the same unfitted estimator, which is what reproduction needs.
Every family here converts to ONNX through skl2onnx.
"""

from __future__ import annotations

from typing import Any

from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    VotingClassifier,
    VotingRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge

LINEAR = "linear"
BOOSTING = "hist_gradient_boosting"
VOTING = "soft_voting"

# Small grids, cheapest first: the search is time-boxed and stops launching candidates
# once its budget is spent, so the first entries of each family always run.
GRIDS: dict[str, list[dict[str, Any]]] = {
    LINEAR: [{"C": 1.0}, {"C": 0.1}, {"C": 10.0}],
    BOOSTING: [
        {"learning_rate": 0.1, "max_leaf_nodes": 31, "max_iter": 100},
        {"learning_rate": 0.1, "max_leaf_nodes": 15, "max_iter": 200},
        {"learning_rate": 0.05, "max_leaf_nodes": 63, "max_iter": 200},
    ],
}


def make_estimator(task: str, family: str, params: dict[str, Any], seed: int) -> BaseEstimator:
    """The unfitted estimator of ``family`` with ``params``.

    Args:
        task: ``classification`` or ``regression``.
        family: :data:`LINEAR`, :data:`BOOSTING` or :data:`VOTING`.
        params: the family's hyperparameters (for voting: ``members``, a list of
            ``[family, params]`` pairs).
        seed: random seed.
    """
    classify = task == "classification"
    if family == LINEAR:
        if classify:
            return LogisticRegression(C=float(params["C"]), max_iter=1000, random_state=seed)
        return Ridge(alpha=1.0 / float(params["C"]))
    if family == BOOSTING:
        kwargs = {
            "learning_rate": float(params["learning_rate"]),
            "max_leaf_nodes": int(params["max_leaf_nodes"]),
            "max_iter": int(params["max_iter"]),
            # Early stopping would carve its own random validation split: keep it off so
            # the fit depends only on the recorded params, data and seed.
            "early_stopping": False,
            "random_state": seed,
        }
        if classify:
            return HistGradientBoostingClassifier(**kwargs)
        return HistGradientBoostingRegressor(**kwargs)
    if family == VOTING:
        members = [
            (f"{member_family}_{i}", make_estimator(task, member_family, member_params, seed))
            for i, (member_family, member_params) in enumerate(params["members"])
        ]
        if classify:
            # flatten_transform=False keeps the ensemble convertible by skl2onnx.
            return VotingClassifier(members, voting="soft", flatten_transform=False)
        return VotingRegressor(members)
    raise ValueError(f"unknown estimator family {family!r}")


def describe(family: str, params: dict[str, Any]) -> str:
    """A short human name of a candidate, e.g. ``hist_gradient_boosting(max_iter=100, ...)``."""
    if family == VOTING:
        # No square brackets: terminal tables read them as markup.
        return "soft_voting(" + " + ".join(describe(f, p) for f, p in params["members"]) + ")"
    inner = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{family}({inner})"
