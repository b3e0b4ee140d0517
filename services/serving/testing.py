"""Tiny real models for tests and benchmarks: fit, export, register, alias.

Fits the contract's own pipeline (:func:`shared.features.build_pipeline`) on a few
hundred rows, exports it with :func:`shared.features.to_onnx` and registers it in a
store the way training does, so serving loads it through its normal path. Not used by
the service itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shared.contract import Contract
from shared.features import build_pipeline, onnx_input_names, to_frame, to_onnx
from shared.registry import ModelManifest, Parity, Registry

CENSUS_REFERENCE = "employment_MA_reference.pq"


def census_rows(data_dir: Path, n: int, *, offset: int = 0) -> pd.DataFrame:
    """``n`` rows of the census reference data starting at ``offset`` (features + label)."""
    frame = pd.read_parquet(data_dir / CENSUS_REFERENCE)
    return frame.iloc[offset : offset + n].reset_index(drop=True)


def fit_model(contract: Contract, rows: pd.DataFrame, *, c: float = 1.0) -> tuple[Any, bytes]:
    """A fitted logistic-regression pipeline on ``rows`` and its ONNX bytes."""
    from sklearn.linear_model import LogisticRegression

    frame = to_frame(contract, {f: rows[f].to_numpy() for f in contract.feature_names})
    pipeline = build_pipeline(contract, LogisticRegression(C=c, max_iter=500))
    pipeline.fit(frame, rows[contract.label.name].to_numpy())
    return pipeline, to_onnx(pipeline, contract)


def register_model(
    registry: Registry,
    contract: Contract,
    onnx: bytes,
    *,
    dataset_version: str,
    alias: str | None = "champion",
    detail: dict[str, Any] | None = None,
) -> ModelManifest:
    """Register ``onnx`` as the next version of ``contract.name`` and point ``alias`` at it."""
    sha, uri = registry.put_onnx(contract.name, onnx)
    manifest = ModelManifest(
        model=contract.name,
        version=registry.next_version(contract.name),
        task=contract.task,
        dataset_version=dataset_version,
        code_version="test",
        estimator="LogisticRegression",
        seed=0,
        features=contract.feature_names,
        onnx_inputs=onnx_input_names(contract),
        classes=list(contract.label.classes or []) or None,
        parity=Parity(passed=True, rows=0, label_agreement=1.0, max_abs_diff=0.0, tolerance=1e-5),
        onnx_uri=uri,
        onnx_sha256=sha,
        training_time_s=0.0,
        reason="test fixture",
    )
    registry.register(manifest)
    if alias is not None:
        registry.set_alias(
            contract.name, alias, manifest.version, actor="test", reason="fixture", detail=detail
        )
    return manifest


def feature_matrix(contract: Contract, rows: pd.DataFrame) -> np.ndarray:
    """Rows as the 2-D ``input`` tensor [N, F] (float64), categories by numeric value."""
    frame = to_frame(contract, {f: rows[f].to_numpy() for f in contract.feature_names})
    matrix: np.ndarray = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    return matrix
