"""MLServer tuned: a custom runtime running the census ONNX file in ONNX Runtime.

The strongest MLServer set-up for this model: the numpy codec on one FP32 matrix (no
pandas codec, no tensor per feature), ORT instead of the scikit-learn pipeline, and
``parallel_workers`` chosen by the benchmark. Loaded by MLServer from
``model-settings.json`` (``"implementation": "mlserver_onnx.OnnxMatrixRuntime"``) with
this folder on ``PYTHONPATH``.
"""

from __future__ import annotations

from census_onnx import from_env
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxMatrixRuntime(MLModel):
    """``input`` (FP32 rows x features) -> ``label`` (INT64), ``probabilities`` (FP32)."""

    async def load(self) -> bool:
        self._model = from_env()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        label, proba = self._model(NumpyCodec.decode_input(payload.inputs[0]))
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output("label", label),
                NumpyCodec.encode_output("probabilities", proba),
            ],
        )
