"""The OIP v2 ``inference.GRPCInferenceService``: convert, delegate, map errors."""

from __future__ import annotations

from typing import Any

import grpc

from shared.protogen import inference_pb2 as pb
from shared.protogen import inference_pb2_grpc as pb_grpc

from ..dataplane import PLATFORM, DataPlane
from ..errors import ServingError
from .codec import decode_request, encode_response, tensor_metadata

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

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        try:
            return encode_response(await self.dataplane.infer(decode_request(request)))
        except ServingError as exc:
            code, message = exc.code, exc.message
        except Exception as exc:  # never crash the server on a request
            self.log.error("infer.failed", model=request.model_name, error=repr(exc), exc_info=exc)
            code, message = "INTERNAL", f"internal error: {type(exc).__name__}"
        self.dataplane.failed(request.model_name, request.model_version, code)
        await context.abort(STATUS[code], message)
        raise AssertionError("unreachable: context.abort raises")
