"""Triton Inference Server itself (the ``tritonserver`` binary in ``nvidia-pytriton``).

Triton's C++ gRPC front end and scheduler with PyTriton's Python backend, serving a
callable that runs the census ONNX session on one FP32 matrix, with Triton's dynamic
batcher on (PyTriton's default for a batching model).

``python bench/peers/pytriton_server.py MODEL GRPC_PORT HTTP_PORT METRICS_PORT``
(``BENCH_ONNX`` and ``BENCH_COLUMNS`` name the model); prints ``ready`` when serving.
"""

from __future__ import annotations

import sys

import numpy as np
from census_onnx import from_env
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main(name: str, grpc_port: int, http_port: int, metrics_port: int) -> None:
    """Serve until killed."""
    model = from_env()

    @batch
    def infer(input: np.ndarray) -> dict[str, np.ndarray]:
        label, proba = model(input)
        return {"label": label.reshape(-1, 1), "probabilities": proba}

    config = TritonConfig(grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=name,
            infer_func=infer,
            inputs=[Tensor(name="input", dtype=np.float32, shape=(model.width,))],
            outputs=[
                Tensor(name="label", dtype=np.int64, shape=(1,)),
                Tensor(name="probabilities", dtype=np.float32, shape=(-1,)),
            ],
            config=ModelConfig(max_batch_size=4096),
        )
        print("ready", flush=True)
        triton.serve()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
