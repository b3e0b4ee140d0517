"""The census ONNX model behind one FP32 matrix, for the peer servers' own venvs.

Every peer runs the same ONNX file the same way the minimal server does: one
``(rows, features)`` FP32 matrix in, the model's per-feature feeds built from it
(numbers as they are, category codes as strings), ``label`` and ``probabilities``
out. Only numpy and onnxruntime are imported, so the peers' venvs need nothing of
the project; the feature list comes from a JSON file the benchmark writes from the
contract (``[[name, is_numeric], ...]``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort


class CensusOnnx:
    """One ORT session on one thread, like the minimal server's."""

    def __init__(self, onnx_path: str, columns_path: str) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        with open(columns_path, encoding="utf-8") as f:
            self.columns = [(j, name, numeric) for j, (name, numeric) in enumerate(json.load(f))]
        self.width = len(self.columns)

    def __call__(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(label, probabilities) of a ``(rows, width)`` matrix."""
        x = np.asarray(matrix, dtype=np.float32).reshape(-1, self.width)
        feeds = {}
        for j, name, numeric in self.columns:
            col = x[:, j : j + 1]
            feeds[name] = col if numeric else col.astype(np.int64).astype(str).astype(object)
        label, proba = self.session.run(None, feeds)
        return np.asarray(label, dtype=np.int64), np.asarray(proba, dtype=np.float32)


def from_env() -> CensusOnnx:
    """The model named by ``BENCH_ONNX`` and ``BENCH_COLUMNS`` (set by bench/serving.py)."""
    return CensusOnnx(os.environ["BENCH_ONNX"], os.environ["BENCH_COLUMNS"])
