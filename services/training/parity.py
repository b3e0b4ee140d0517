"""The parity gate: sklearn and ONNX Runtime must agree on the holdout.

Outputs are compared element by element, ``|onnx - sklearn| <= atol + rtol *
max(|sklearn|, scale)``: probabilities (columns in contract order) for a classifier, the
predicted value for a regressor. ONNX Runtime computes in float32, whose rounding grows
with the magnitude of what it sums, so a regression in the millions needs the relative
part; probabilities in [0, 1] are held to the absolute part (``scale`` 0). For a
regressor ``scale`` is the root mean square of sklearn's predictions on the holdout: a
prediction is a sum of terms of the labels' size (an intercept, a tree ensemble's
baseline) even where they cancel to near zero, so a value of -139 from a model of labels
around 1e4 carries the rounding of 1e4 (seen: 0.004 off, 1.5x a bound taken of its own
size, on a linear model a generated data set trained). The result names the worst
row, the one whose difference comes closest to (or goes furthest past) its bound. Both
sides see the same float32 feature values, the ones serving feeds the graph: the gate
judges the export, not the precision of float32 inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from shared.contract import Contract
from shared.features import as_served
from shared.registry import Parity

from .evaluation import Predictions, sklearn_predictions
from .runtime import onnx_predictions


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def magnitude(contract: Contract, expected: np.ndarray) -> float:
    """The ``scale`` the relative tolerance is taken of at least (module docstring): the
    root mean square of a regressor's expected values, 0 for a classifier's
    probabilities."""
    if contract.task != "regression":
        return 0.0
    finite = expected[np.isfinite(expected)]
    return float(np.sqrt(np.mean(np.square(finite)))) if finite.size else 0.0


def bound(expected: np.ndarray, atol: float, rtol: float, scale: float) -> np.ndarray:
    """Each value's parity bound, ``atol + rtol * max(|expected|, scale)``."""
    bounds: np.ndarray = atol + rtol * np.maximum(np.abs(expected), scale)
    return bounds


def compare(
    contract: Contract,
    expected: Predictions,
    actual: Predictions,
    atol: float,
    rtol: float = 0.0,
) -> Parity:
    """Parity of two sets of predictions: every label equal, values within the bound.

    Args:
        contract: the data contract (task and classes).
        expected: the reference predictions (sklearn).
        actual: the predictions checked against them (ONNX Runtime).
        atol: absolute tolerance.
        rtol: relative tolerance, of ``max(|expected|, scale)`` (:func:`magnitude`).
    """
    rows = len(expected.labels)
    classes = list(contract.label.classes or [])
    if contract.task == "regression":
        want = expected.labels.astype(np.float64).reshape(-1, 1)
        got = actual.labels.astype(np.float64).reshape(-1, 1)
        agree = np.ones(rows, dtype=bool)
    else:
        assert expected.proba is not None
        assert actual.proba is not None
        want, got = expected.proba, actual.proba
        agree = np.asarray(expected.labels == actual.labels, dtype=bool).reshape(-1)
    diff = np.abs(got - want)
    scale = magnitude(contract, want)
    bounds = bound(want, atol, rtol, scale)
    ratio = diff / bounds
    within = bool(np.all(ratio <= 1.0)) if diff.size else True
    worst: dict[str, Any] | None = None
    if diff.size:
        # A label disagreement is worse than any probability gap: name that row first.
        flat = int(np.argmax(np.where(agree[:, None], ratio, np.inf)))
        row, col = divmod(flat, diff.shape[1])
        worst = {
            "index": row,
            "sklearn": float(want[row, col]),
            "onnx": float(got[row, col]),
            "bound": float(bounds[row, col]),
            "ratio": float(ratio[row, col]),
        }
        if contract.task == "classification":
            worst["class"] = _py(classes[col]) if col < len(classes) else col
            worst["label"] = {
                "sklearn": _py(expected.labels[row]),
                "onnx": _py(actual.labels[row]),
            }
    agreement = float(np.mean(agree)) if rows else 1.0
    return Parity(
        passed=bool(agreement == 1.0 and within),
        rows=rows,
        label_agreement=agreement,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        tolerance=atol,
        rtol=rtol,
        scale=scale,
        worst_row=worst,
    )


def check_parity(
    contract: Contract,
    pipeline: Pipeline,
    onnx: bytes,
    x: pd.DataFrame,
    atol: float,
    rtol: float = 0.0,
) -> tuple[Parity, Predictions]:
    """Run the fitted pipeline and its ONNX export on ``x`` and compare them, both on the
    float32 feature values the export receives (:func:`shared.features.as_served`).

    Returns the parity and the export's predictions (what serving will answer, which
    the holdout evaluation then scores)."""
    served = onnx_predictions(contract, onnx, x)
    parity = compare(
        contract,
        sklearn_predictions(contract, pipeline, as_served(contract, x)),
        served,
        atol,
        rtol,
    )
    return parity, served
