"""KServe's Python model server (``kserve`` on PyPI) with the census ONNX model in ORT.

A ``kserve.Model`` whose ``predict`` takes the OIP v2 request's one FP32 matrix
(``raw_input_contents`` over gRPC, decoded by KServe's ``InferInput.as_numpy``) and
answers ``label`` and ``probabilities`` as raw tensors; KServe's own gRPC server
(``grpc.aio``) and REST server (uvicorn) in front, one worker.

``python bench/peers/kserve_server.py MODEL --grpc_port P --http_port Q``
(``BENCH_ONNX`` and ``BENCH_COLUMNS`` name the model).
"""

from __future__ import annotations

import sys
from typing import Any

from census_onnx import CensusOnnx, from_env
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class CensusModel(Model):  # type: ignore[misc]
    """The matrix in, ``label`` and ``probabilities`` out."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.model: CensusOnnx | None = None
        self.load()

    def load(self) -> bool:
        self.model = from_env()
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers: Any = None) -> InferResponse:
        assert self.model is not None
        label, proba = self.model(payload.inputs[0].as_numpy())
        outputs = []
        for name, value, datatype in (("label", label, "INT64"), ("probabilities", proba, "FP32")):
            out = InferOutput(name=name, shape=list(value.shape), datatype=datatype)
            out.set_data_from_numpy(value, binary_data=True)
            outputs.append(out)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=outputs
        )


if __name__ == "__main__":
    name = sys.argv.pop(1)  # the rest are KServe's own flags
    ModelServer(workers=1).start([CensusModel(name)])
