"""The exported model run with ONNX Runtime inside the training service.

Sessions here run on one thread without spinning: training runs beside other work
(the search on one core, the finishing of its leader on the other, see :mod:`.ahead`),
and ONNX Runtime's default pool of spinning threads would take both cores from it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pandas as pd

from shared.contract import Contract
from shared.features import onnx_feeds

from .evaluation import Feeds, Predictions


def session(onnx: bytes) -> ort.InferenceSession:
    """A one-thread, non-spinning CPU session of ``onnx``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


def predictor(contract: Contract, onnx: bytes) -> Callable[[Feeds], Predictions]:
    """A function from feeds to the exported model's predictions (probability columns
    in the contract's class order, see :mod:`.export`)."""
    run = session(onnx).run

    def predict(feeds: Feeds) -> Predictions:
        outputs = run(None, feeds)
        if contract.task == "regression":
            return Predictions(np.asarray(outputs[0], dtype=np.float64).ravel(), None)
        return Predictions(np.asarray(outputs[0]), np.asarray(outputs[1], dtype=np.float64))

    return predict


def onnx_predictions(contract: Contract, onnx: bytes, x: pd.DataFrame) -> Predictions:
    """Run an exported model with ONNX Runtime on a frame made by ``table_to_frame``."""
    return predictor(contract, onnx)(onnx_feeds(contract, x))
