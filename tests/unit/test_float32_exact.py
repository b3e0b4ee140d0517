"""Fitted constants made exact in float32: scikit-learn and the ONNX export agree on
features far from zero relative to their spread, for every estimator family exported."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import RandomForestRegressor
from sklearn.tree import DecisionTreeClassifier

from services.training.estimators import BOOSTING, LINEAR, VOTING, make_estimator
from services.training.export import export
from services.training.parity import check_parity
from shared.contract import Contract, parse_contract
from shared.features import build_pipeline, to_frame
from shared.float32_exact import floor_float32, make_float32_exact

BOOST = {"learning_rate": 0.1, "max_leaf_nodes": 31, "max_iter": 60}
LIN = {"C": 1.0}


def contract(task: str, nullable: bool = False) -> Contract:
    label = {"name": "y", "classes": [0, 2, 1]} if task == "classification" else {"name": "y"}
    return parse_contract(
        {
            "name": "offset",
            "task": task,
            "id": "id",
            "label": label,
            "features": [
                {"name": "price", "type": "float", "nullable": nullable},
                {"name": "z", "type": "float"},
                {"name": "colour", "type": "category", "values": ["red", "blue"]},
            ],
        }
    )


def data(c: Contract, offset: float, spread: float, rows: int = 400) -> tuple[pd.DataFrame, Any]:
    """A feature at ``offset`` +- ``spread`` that decides the label, one noise feature."""
    rng = np.random.default_rng(7)
    price = offset + rng.normal(0, spread, rows)
    z = rng.normal(0, 1, rows)
    colour = rng.choice(["red", "blue"], rows)
    signal = (price - offset) / spread + 0.3 * z
    if c.task == "classification":
        y = np.digitize(signal, [-0.5, 0.5])
        y = np.array([0, 2, 1])[y]
    else:
        y = 1000.0 * signal
    x = to_frame(c, {"price": price, "z": z, "colour": colour})
    return x, y


def families(task: str) -> list[tuple[str, Any]]:
    seed = 0
    out = [
        ("linear", make_estimator(task, LINEAR, LIN, seed)),
        ("boosting", make_estimator(task, BOOSTING, BOOST, seed)),
        (
            "voting",
            make_estimator(task, VOTING, {"members": [[LINEAR, LIN], [BOOSTING, BOOST]]}, seed),
        ),
    ]
    if task == "classification":
        out.append(("tree", DecisionTreeClassifier(random_state=seed)))
    else:
        out.append(("forest", RandomForestRegressor(n_estimators=20, random_state=seed)))
    return out


CASES = [
    (task, name, offset, spread)
    for task in ("classification", "regression")
    for name, _ in families(task)
    for offset, spread in ((512.347, 0.1), (1.0e4, 0.05), (2.0e6, 40.0))
]


@pytest.mark.parametrize(("task", "family", "offset", "spread"), CASES)
def test_the_export_agrees_with_sklearn_on_features_far_from_zero(
    task: str, family: str, offset: float, spread: float
) -> None:
    c = contract(task)
    x, y = data(c, offset, spread)
    estimator = dict(families(task))[family]
    pipeline = build_pipeline(c, estimator).fit(x.iloc[:300], y[:300])
    make_float32_exact(pipeline)
    # The contract's default bound (1e-4 + 1e-5 x |sklearn|) on the held-out rows.
    parity, _ = check_parity(
        c, pipeline, export(pipeline, c), x.iloc[300:], c.promotion.parity_atol, 1e-5
    )
    assert parity.passed, parity
    assert parity.label_agreement == 1.0


def test_without_it_a_scaled_model_disagrees() -> None:
    c = contract("classification")
    x, y = data(c, 512.347, 0.1)
    pipeline = build_pipeline(c, dict(families("classification"))["linear"])
    pipeline.fit(x.iloc[:300], y[:300])
    parity, _ = check_parity(c, pipeline, export(pipeline, c), x.iloc[300:], 1e-4, 1e-5)
    assert not parity.passed, parity  # the float32 mean is 3e-5 off: 3e-4 standard units


def test_inputs_on_a_rounded_threshold_take_the_same_branch() -> None:
    # Served inputs that equal a split threshold's float32 rounding (above the float64
    # threshold): without the rewrite ONNX sends them left, sklearn right.
    c = contract("classification")
    x, y = data(c, 512.347, 0.1)
    pipeline = build_pipeline(c, make_estimator(c.task, BOOSTING, BOOST, 0)).fit(x, y)
    thresholds = np.array(
        [
            node["num_threshold"]
            for iteration in pipeline.steps[-1][1]._predictors
            for predictor in iteration
            for node in predictor.nodes
            if not node["is_leaf"] and node["feature_idx"] == 0  # "price"
        ]
    )
    rounded_up = thresholds[thresholds.astype(np.float32).astype(np.float64) > thresholds]
    assert rounded_up.size > 0
    edge = x.iloc[np.arange(rounded_up.size) % len(x)].copy()
    edge["price"] = rounded_up.astype(np.float32).astype(np.float64)
    before, _ = check_parity(c, pipeline, export(pipeline, c), edge, 1e-4, 1e-5)
    assert not before.passed
    make_float32_exact(pipeline)
    after, _ = check_parity(c, pipeline, export(pipeline, c), edge, 1e-4, 1e-5)
    assert after.passed, after
    assert after.max_abs_diff < 1e-6


def test_a_nullable_features_imputed_value_is_exact_too() -> None:
    c = contract("classification", nullable=True)
    x, y = data(c, 512.347, 0.1)
    x.loc[x.index[::7], "price"] = np.nan
    pipeline = build_pipeline(c, dict(families("classification"))["linear"]).fit(
        x.iloc[:300], y[:300]
    )
    make_float32_exact(pipeline)
    imputer = pipeline.steps[0][1].named_transformers_["num"].named_steps["impute"]
    assert imputer.statistics_.astype(np.float32).astype(np.float64).tolist() == (
        imputer.statistics_.tolist()
    )
    parity, _ = check_parity(c, pipeline, export(pipeline, c), x.iloc[300:], 1e-4, 1e-5)
    assert parity.passed, parity


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e30, 1e30, allow_nan=False), st.floats(-1e30, 1e30, allow_nan=False))
def test_a_floored_threshold_splits_every_float32_alike(t: float, x: float) -> None:
    floored = float(floor_float32(np.array([t]))[0])
    assert floored <= t
    assert np.float32(floored) == floored  # exact in float32
    served = float(np.float32(x))
    if np.isfinite(served):
        assert (served <= t) == (served <= floored)
