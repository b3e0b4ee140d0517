"""The smallest reasonable OIP v2 server: grpc.aio + ONNX Runtime, nothing else.

The baseline the serving benchmark compares Flywheel with: it decodes the raw 2-D
``input`` tensor, builds the census model's feeds (numbers as they are, category codes
as strings), runs ORT and returns raw ``label`` and ``probabilities``. No validation
beyond what a crash needs, no metrics, no events, no routing.

With ``--floor`` it is the gRPC floor instead: the same server answering every request
with the response it computed for the first request of that size (no decoding, no
model run), so what it costs is grpc.aio's own per-request work and the client's. No
Python OIP v2 server on grpc.aio can be faster; the report compares the peers with it.

``python -m bench.minimal_server MODEL.onnx CONTRACT.yaml PORT [--floor]``
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from shared.contract import load_contract
from shared.protogen import inference_pb2 as pb
from shared.protogen import inference_pb2_grpc as pb_grpc


class MinimalServicer(pb_grpc.GRPCInferenceServiceServicer):
    """ModelInfer and the liveness calls a client needs."""

    def __init__(self, onnx_path: str, contract_path: str):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        contract = load_contract(contract_path)
        self.columns = [(j, f.name, f.is_numeric) for j, f in enumerate(contract.features)]
        self.width = len(self.columns)

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=True)

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(-1, self.width)
        feeds = {}
        for j, name, numeric in self.columns:
            col = x[:, j : j + 1]
            feeds[name] = col if numeric else col.astype(np.int64).astype(str).astype(object)
        label, proba = self.session.run(None, feeds)
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        response.outputs.add(name="label", datatype="INT64", shape=label.shape)
        response.outputs.add(name="probabilities", datatype="FP32", shape=proba.shape)
        response.raw_output_contents.extend([label.tobytes(), proba.tobytes()])
        return response


class FloorServicer(MinimalServicer):
    """Answers each request size with one response computed once: grpc.aio's floor."""

    def __init__(self, onnx_path: str, contract_path: str):
        super().__init__(onnx_path, contract_path)
        self.answers: dict[int, pb.ModelInferResponse] = {}

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        size = len(request.raw_input_contents[0])
        answer = self.answers.get(size)
        if answer is None:
            answer = self.answers[size] = await super().ModelInfer(request, context)
        return answer


async def serve(onnx_path: str, contract_path: str, port: int, floor: bool = False) -> None:
    """Serve until cancelled (``floor``: the gRPC floor, see the module docstring)."""
    server = grpc.aio.server()
    servicer = (FloorServicer if floor else MinimalServicer)(onnx_path, contract_path)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), "--floor" in sys.argv[4:]))
