"""Fitted constants the exported graph holds exactly: float32 values, rounded the safe way.

ONNX Runtime runs the exported graph in float32: a split threshold, a scaler's mean or an
imputed median is stored as the nearest float32, while scikit-learn keeps the float64 the
fit found. For features far from zero relative to their spread (a price near 512 that
moves by 0.1, a year with decimals, a coordinate) the two disagree on real inputs:

- a tree split ``x <= t`` with ``t`` a float64 midpoint between two training values: an
  input ``x`` (float32, as served) equal to ``float32(t) > t`` goes left in ONNX and right
  in scikit-learn. Histogram boosting compares in float64 and hits it often (seen: 2 of 60
  holdout rows, probabilities 0.29 apart, on a generated feature near 512 +- 0.1);
- a scaler's ``(x - mean) / scale``: the float32 mean is up to half a unit in the last
  place off (3e-5 near 512), a 3e-4 shift in standard units for a 0.1 spread, enough to
  fail the 1e-4 probability parity bound through a linear model's coefficients.

:func:`make_float32_exact` rewrites those constants of a fitted pipeline in place so both
runtimes compute the same function of a float32 input: every threshold becomes the largest
float32 not above it (for a float32 ``x``, ``x <= t`` exactly when ``x <= that``, so trees
answer as before on every served input), every mean, scale and imputed value its nearest
float32 (a change far below the data's own precision). The parity gate then measures the
export, not float32 rounding of the constants.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    BaseEnsemble,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    StackingClassifier,
    StackingRegressor,
    VotingClassifier,
    VotingRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import BaseDecisionTree

_ENSEMBLES = (VotingClassifier, VotingRegressor, StackingClassifier, StackingRegressor)
_HISTOGRAM = (HistGradientBoostingClassifier, HistGradientBoostingRegressor)


def floor_float32(values: np.ndarray) -> np.ndarray:
    """Each value as the largest float32 not above it (as float64)."""
    rounded = values.astype(np.float32)
    above = rounded.astype(np.float64) > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded.astype(np.float64)


def nearest_float32(values: np.ndarray) -> np.ndarray:
    """Each value as its nearest float32 (as float64)."""
    return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64)


def make_float32_exact(estimator: Any) -> None:
    """Rewrite a fitted pipeline's constants so that the float32 ONNX graph and
    scikit-learn compute the same (see the module docstring). Walks pipelines, column
    transformers, voting/stacking ensembles and forests; leaves anything else as it is."""
    if isinstance(estimator, Pipeline):
        for _, step in estimator.steps:
            make_float32_exact(step)
    elif isinstance(estimator, ColumnTransformer):
        for _, transformer, _ in estimator.transformers_:
            make_float32_exact(transformer)
    elif isinstance(estimator, _ENSEMBLES):
        for member in estimator.estimators_:
            make_float32_exact(member)
        if hasattr(estimator, "final_estimator_"):
            make_float32_exact(estimator.final_estimator_)
    elif isinstance(estimator, StandardScaler):
        if estimator.mean_ is not None:
            estimator.mean_ = nearest_float32(estimator.mean_)
        if estimator.scale_ is not None:
            estimator.scale_ = nearest_float32(estimator.scale_)
    elif isinstance(estimator, SimpleImputer):
        if estimator.statistics_.dtype.kind == "f":
            estimator.statistics_ = nearest_float32(estimator.statistics_)
    elif isinstance(estimator, BaseDecisionTree):
        _floor_tree(estimator)
    elif isinstance(estimator, _HISTOGRAM):
        for iteration in estimator._predictors:
            for predictor in iteration:
                nodes = predictor.nodes
                split = ~nodes["is_leaf"].astype(bool) & ~nodes["is_categorical"].astype(bool)
                nodes["num_threshold"][split] = floor_float32(nodes["num_threshold"][split])
    elif isinstance(estimator, BaseEnsemble):  # forests, extra trees, gradient boosting
        for member in np.asarray(estimator.estimators_, dtype=object).ravel():
            make_float32_exact(member)


def _floor_tree(tree: BaseEstimator) -> None:
    state = tree.tree_
    split = state.children_left != -1  # leaves hold -2 as their threshold
    # ``tree_.threshold`` is a writable view of the tree's node array.
    state.threshold[split] = floor_float32(state.threshold[split])
