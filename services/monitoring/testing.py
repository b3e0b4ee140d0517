"""Helpers for tests and benchmarks: a seeded store and prediction events from data.

:func:`seed_version` writes what training and validation would have written for a
model version — a dataset version with its Parquet batch and reference profile, and a
registered manifest with a real (tiny) ONNX model — so monitoring can be exercised
without running those services. :func:`prediction_events` turns rows with a model's
recorded scores (the car-loan files carry NannyML's ``y_pred_proba``) into
:class:`shared.events.Prediction` events as serving would publish them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.linear_model import LogisticRegression

from shared.contract import Contract
from shared.datasets import BatchRef, DatasetCatalog, DatasetVersion
from shared.drift import build_profile
from shared.events import PartitionOffsets, Prediction
from shared.features import build_pipeline, onnx_input_names, to_frame, to_onnx
from shared.registry import ModelManifest, Parity, Registry
from shared.store import ArtifactStore


def seed_version(
    store: ArtifactStore,
    contract: Contract,
    reference: pd.DataFrame,
    version: int,
    *,
    champion: bool = True,
) -> ModelManifest:
    """Register ``version`` of ``contract``'s model trained on ``reference``.

    ``reference`` holds the contract's features, its label, id and event-time columns.
    """
    catalog, registry = DatasetCatalog(store), Registry(store)
    table = pa.Table.from_pandas(reference, preserve_index=False)
    sha, uri = store.put_parquet(f"datasets/{contract.name}/batches", table)
    frame = to_frame(contract, {f: reference[f].to_numpy() for f in contract.feature_names})
    labels = reference[contract.label.name].to_numpy()
    profile_uri = catalog.put_profile(contract.name, build_profile(contract, frame, labels))
    parent = catalog.latest(contract.name)
    dataset = catalog.add(
        DatasetVersion(
            dataset=contract.name,
            parent=parent.id if parent is not None else None,
            batches=[
                BatchRef(
                    batch_id=sha,
                    uri=uri,
                    sha256=sha,
                    rows=len(reference),
                    raw_uri=uri,
                    report_uri=uri,
                    offsets=[
                        PartitionOffsets(
                            topic="data.events", partition=0, first=0, last=len(reference) - 1
                        )
                    ],
                )
            ],
            rows=len(reference),
            profile_uri=profile_uri,
        )
    )
    pipeline = build_pipeline(contract, LogisticRegression(max_iter=200))
    y = np.asarray([str(v) for v in labels])
    pipeline.fit(frame, y)
    onnx_sha, onnx_uri = registry.put_onnx(contract.name, to_onnx(pipeline, contract))
    manifest = registry.register(
        ModelManifest(
            model=contract.name,
            version=version,
            task=contract.task,
            dataset_version=dataset.id,
            code_version="test",
            estimator="LogisticRegression",
            seed=0,
            features=contract.feature_names,
            onnx_inputs=onnx_input_names(contract),
            classes=list(contract.label.classes or []),
            parity=Parity(
                passed=True, rows=0, label_agreement=1.0, max_abs_diff=0.0, tolerance=1e-5
            ),
            onnx_uri=onnx_uri,
            onnx_sha256=onnx_sha,
            training_time_s=0.0,
            reason="test fixture",
            dataset_rows=len(reference),  # what training records, for its new-rows policy
        )
    )
    if champion:
        registry.set_alias(contract.name, "champion", version, actor="training", reason="fixture")
    return manifest


def prediction_events(
    contract: Contract,
    rows: pd.DataFrame,
    manifest: ModelManifest,
    *,
    role: Literal["champion", "canary", "shadow", "pinned"] = "champion",
    score_column: str = "y_pred_proba",
    invert: bool = False,
) -> Iterator[Prediction]:
    """One :class:`Prediction` per row, from the row's recorded positive-class score.

    ``invert`` flips every answer (a deliberately wrong model, for rollback tests).
    """
    classes = list(contract.label.classes or [0, 1])
    for rec in rows.to_dict(orient="records"):
        p = float(rec[score_column])
        if invert:
            p = 1.0 - p
        label = classes[-1] if p >= 0.5 else classes[0]
        inputs: dict[str, Any] = {f: _scalar(rec[f]) for f in contract.feature_names}
        yield Prediction(
            id=f"{contract.name}-{rec[contract.id]}-{manifest.version}",
            model=contract.name,
            model_version=manifest.version,
            data_version=manifest.dataset_version,
            request_id=str(rec[contract.id]),
            role=role,
            inputs=inputs,
            outputs={"label": label, "probabilities": [1.0 - p, p]},
            latency_ms=1.0,
        )


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_car_loan(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """NannyML's synthetic car-loan reference and analysis (with its targets) frames."""
    reference = pd.read_csv(data_dir / "synthetic_car_loan_reference.csv")
    reference["repaid"] = reference["repaid"].astype(int)
    analysis = pd.read_csv(data_dir / "synthetic_car_loan_analysis.csv")
    target = pd.read_csv(data_dir / "synthetic_car_loan_analysis_target.csv")
    analysis = analysis.merge(target, on="id", how="left")
    return reference, analysis
