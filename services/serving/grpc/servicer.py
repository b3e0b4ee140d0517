"""The OIP v2 ``inference.GRPCInferenceService``: convert, delegate, map errors.

Beside the six OIP v2 RPCs, Triton's ModelStreamInfer, ModelConfig, ModelStatistics and
RepositoryIndex; RepositoryModelLoad/Unload answer UNIMPLEMENTED (deployments are signed
events, see :mod:`..extensions`). Triton's shared-memory, trace and log RPCs are not in
the service: UNIMPLEMENTED from gRPC itself."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from shared.protogen import inference_pb2 as pb
from shared.protogen import inference_pb2_grpc as pb_grpc

from ..dataplane import PLATFORM, DataPlane
from ..errors import ServingError
from ..extensions import REPOSITORY_CHANGES, model_config, model_statistics, repository_index
from .codec import ResponseEncoder, decode_request, tensor_metadata

STATUS = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Thin adapter over :class:`DataPlane`.

    Args:
        dataplane: the transport-free core.
        log: a structlog logger.
    """

    def __init__(self, dataplane: DataPlane, log: Any):
        self.dataplane = dataplane
        self.metrics = dataplane.metrics
        self.log = log
        self.encoder = ResponseEncoder()

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self.dataplane.model_ready(request.name, request.version)
        )

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        name, version, extensions = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        try:
            versions, inputs, outputs, params = self.dataplane.model_metadata(
                request.name, request.version
            )
        except ServingError as exc:
            await context.abort(STATUS[exc.code], exc.message)
            raise  # unreachable: abort raises
        response = pb.ModelMetadataResponse(
            name=request.name,
            versions=versions,
            platform=PLATFORM,
            inputs=[tensor_metadata(s) for s in inputs],
            outputs=[tensor_metadata(s) for s in outputs],
        )
        for key, value in params.items():
            response.parameters[key].string_param = value
        return response

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse | ServingError:
        start = time.perf_counter()
        try:
            return self.encoder.encode(await self.dataplane.infer(decode_request(request)))
        except ServingError as exc:
            error = exc
        except Exception as exc:  # never crash the server on a request
            self.log.error("infer.failed", model=request.model_name, error=repr(exc), exc_info=exc)
            error = ServingError("INTERNAL", f"internal error: {type(exc).__name__}")
        elapsed = time.perf_counter() - start
        self.dataplane.failed(request.model_name, request.model_version, error.code, elapsed)
        return error

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        answer = await self._infer(request)
        if isinstance(answer, ServingError):
            await context.abort(STATUS[answer.code], answer.message)
            raise AssertionError("unreachable: context.abort raises")
        return answer

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # One at a time: responses leave in request order; a bad request answers with its
        # error_message (and its id) and the stream goes on.
        async for request in requests:
            answer = await self._infer(request)
            if isinstance(answer, ServingError):
                failed = pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                )
                yield pb.ModelStreamInferResponse(
                    error_message=answer.message, infer_response=failed
                )
            else:
                yield pb.ModelStreamInferResponse(infer_response=answer)

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        try:
            doc = model_config(self.dataplane, request.name, request.version)
        except ServingError as exc:
            await context.abort(STATUS[exc.code], exc.message)
            raise
        return pb.ModelConfigResponse(config=json_format.ParseDict(doc, pb.ModelConfig()))

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        try:
            docs = model_statistics(self.dataplane, request.name, request.version)
        except ServingError as exc:
            await context.abort(STATUS[exc.code], exc.message)
            raise
        return json_format.ParseDict({"model_stats": docs}, pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        docs = repository_index(self.dataplane, request.ready)
        return json_format.ParseDict({"models": docs}, pb.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, REPOSITORY_CHANGES)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, REPOSITORY_CHANGES)
