"""One loaded model version: a verified ONNX Runtime session plus what describes it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnxruntime as ort

from shared.contract import Contract
from shared.registry import ModelManifest

from .inputs import Feeds, InputSpec, TensorSpec

PREDICTION_ID = "prediction_id"


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """ORT options for small, latency-bound batches."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def output_specs(contract: Contract) -> list[TensorSpec]:
    """The tensors a model of ``contract`` returns, ``prediction_id`` included."""
    if contract.task == "classification":
        classes = list(contract.label.classes or [])
        label_type = "INT64" if all(isinstance(c, int) for c in classes) else "BYTES"
        # The column order of ``probabilities``: the contract's, also as JSON for class
        # names that hold a comma.
        class_list = {
            "classes": ",".join(str(c) for c in classes),
            "classes_json": json.dumps(classes, ensure_ascii=False),
        }
        outputs = [
            TensorSpec("label", label_type, (-1,), class_list),
            TensorSpec("probabilities", "FP32", (-1, len(classes)), class_list),
        ]
    else:
        outputs = [TensorSpec("prediction", "FP32", (-1,), {})]
    outputs.append(TensorSpec(PREDICTION_ID, "BYTES", (-1,), {"description": "one id per row"}))
    return outputs


def probability_columns(manifest: ModelManifest, classes: list[Any]) -> np.ndarray | None:
    """Where each contract class is among the ONNX ``probabilities`` columns (None: in
    contract order already).

    Training exports the columns in contract order and records them in the manifest
    (``probability_columns``); an export that does not record them has scikit-learn's
    sorted order. Raises ValueError when the model's classes are not the contract's.
    """
    recorded = (manifest.model_extra or {}).get("probability_columns")
    if recorded is None:
        try:
            recorded = sorted(classes)
        except TypeError:  # mixed ints and strings: no sorted order to assume
            recorded = list(classes)
    position = {str(c): i for i, c in enumerate(recorded)}
    if len(position) != len(classes) or any(str(c) not in position for c in classes):
        raise ValueError(
            f"{manifest.model} v{manifest.version}: probability columns {recorded} are not "
            f"the contract's classes {classes}"
        )
    columns = np.asarray([position[str(c)] for c in classes], dtype=np.int64)
    return None if np.array_equal(columns, np.arange(len(columns))) else columns


class LoadedModel:
    """A model version ready to answer: session, manifest, contract and input spec.

    Args:
        manifest: the registry manifest of this version.
        onnx: the ONNX bytes, already verified against ``manifest.onnx_sha256``.
        spec: the contract's input spec (shared by every version of the model).
        intra_op_threads: ONNX Runtime intra-op threads.
    """

    def __init__(
        self, manifest: ModelManifest, onnx: bytes, spec: InputSpec, intra_op_threads: int
    ):
        self.manifest = manifest
        self.name = manifest.model
        self.version = manifest.version
        self.version_str = str(manifest.version)
        self.data_version = manifest.dataset_version
        self.spec = spec
        self.contract = spec.contract
        self.classifier = self.contract.task == "classification"
        self.session = ort.InferenceSession(
            onnx, sess_options=session_options(intra_op_threads), providers=["CPUExecutionProvider"]
        )
        # Feeds are keyed by feature name; the graph's inputs by the manifest's safe names.
        onnx_names = manifest.onnx_inputs or {n: n for n in spec.names}
        names = {i.name for i in self.session.get_inputs()}
        if set(onnx_names) != set(spec.names) or names != set(onnx_names.values()):
            raise ValueError(
                f"{self.name} v{self.version}: ONNX inputs {sorted(names)} do not match the "
                f"contract's features {spec.names} (mapped as {onnx_names})"
            )
        renamed = any(k != v for k, v in onnx_names.items())
        self._onnx_names: dict[str, str] | None = onnx_names if renamed else None
        self.onnx_outputs = [o.name for o in self.session.get_outputs()]
        self.output_names = [o.name for o in output_specs(self.contract)]
        self._columns = (
            probability_columns(manifest, list(self.contract.label.classes or []))
            if self.classifier
            else None
        )

    def predict(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Model outputs for ``feeds``: ``label`` + ``probabilities`` or ``prediction``."""
        if self._onnx_names:
            feeds = {self._onnx_names[k]: v for k, v in feeds.items()}
        results = self.session.run(None, feeds)
        if self.classifier:
            got = dict(zip(self.onnx_outputs, results, strict=True))
            probabilities = got["probabilities"]
            if self._columns is not None:
                probabilities = probabilities[:, self._columns]
            return {"label": got["label"], "probabilities": probabilities}
        return {"prediction": np.asarray(results[0], dtype=np.float32).reshape(-1)}

    def warm_up(self) -> None:
        """Run one row through the session so the first request pays no set-up cost."""
        feeds: Feeds = {}
        for f in self.contract.features:
            if f.is_numeric:
                value = f.min if f.min is not None else 0.0
                feeds[f.name] = np.full((1, 1), value, dtype=np.float32)
            else:
                feeds[f.name] = np.array([[(f.values or [""])[0]]], dtype=object)
        self.predict(feeds)
