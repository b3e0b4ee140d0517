"""The parity gate: sklearn and ONNX Runtime must agree on the holdout."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
from sklearn.pipeline import Pipeline

from shared.contract import Contract
from shared.features import onnx_feeds
from shared.registry import Parity

from .evaluation import Predictions, sklearn_predictions


def onnx_predictions(contract: Contract, onnx: bytes, x: pd.DataFrame) -> Predictions:
    """Run an exported model with ONNX Runtime on a frame made by ``table_to_frame``."""
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    outputs = session.run(None, onnx_feeds(contract, x))
    if contract.task == "regression":
        return Predictions(np.asarray(outputs[0], dtype=np.float64).ravel(), None)
    return Predictions(np.asarray(outputs[0]), np.asarray(outputs[1], dtype=np.float64))


def compare(
    contract: Contract, expected: Predictions, actual: Predictions, tolerance: float
) -> Parity:
    """Parity of two sets of predictions: every label equal, values within ``tolerance``."""
    rows = len(expected.labels)
    if contract.task == "regression":
        diff = np.abs(expected.labels.ravel() - actual.labels.ravel())
        agreement = float(np.mean(diff <= tolerance)) if rows else 1.0
    else:
        agreement = float(np.mean(expected.labels == actual.labels)) if rows else 1.0
        assert expected.proba is not None
        assert actual.proba is not None
        diff = np.abs(expected.proba - actual.proba)
    max_diff = float(diff.max()) if diff.size else 0.0
    return Parity(
        passed=bool(agreement == 1.0 and max_diff <= tolerance),
        rows=rows,
        label_agreement=agreement,
        max_abs_diff=max_diff,
        tolerance=tolerance,
    )


def check_parity(
    contract: Contract, pipeline: Pipeline, onnx: bytes, x: pd.DataFrame, tolerance: float
) -> Parity:
    """Run the fitted pipeline and its ONNX export on ``x`` and compare them."""
    return compare(
        contract,
        sklearn_predictions(contract, pipeline, x),
        onnx_predictions(contract, onnx, x),
        tolerance,
    )
