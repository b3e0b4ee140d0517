"""The gRPC server component: OIP v2, health, reflection, optional TLS and token auth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import joblib
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from shared.protogen import inference_pb2 as pb
from shared.protogen import inference_pb2_grpc as pb_grpc

from ..dataplane import DataPlane
from ..settings import ServingSettings
from .auth import TokenAuthInterceptor, load_tokens
from .servicer import InferenceServicer

SERVICE_NAME = "inference.GRPCInferenceService"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def server_credentials(settings: ServingSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings (mTLS with a client CA), or None for plaintext."""
    if not settings.tls_configured:
        return None
    if not (settings.tls_cert_file and settings.tls_key_file):
        raise ValueError("TLS needs both tls_cert_file and tls_key_file")
    key = Path(settings.tls_key_file).read_bytes()
    cert = Path(settings.tls_cert_file).read_bytes()
    ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """The generated code's private pool (see tools/gen_proto.py), plus the health and
    reflection protos so reflection can describe every service it lists."""
    pool: descriptor_pool.DescriptorPool = pb.DESCRIPTOR.pool
    for module in (health_pb2, reflection_pb2):
        try:
            pool.FindFileByName(module.DESCRIPTOR.name)
        except KeyError:
            pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


def make_server(
    settings: ServingSettings, interceptors: list[Any], options: list[tuple[str, Any]]
) -> grpc.aio.Server:
    """pygrpc-native's grpc.aio-compatible server (``grpc_implementation`` ``native``) or
    a grpc.aio one: same servicers, interceptors and options. On the native one, unary and
    server-streaming calls are served by Rust threads outside the GIL, the rest by a
    grpc.aio server behind it."""
    if settings.grpc_implementation == "native":
        # The submodule itself: pygrpc_native's lazy ``aio`` attribute recurses in 0.5.0.
        import pygrpc_native.aio as native_aio

        # joblib counts the CPUs this process may use (affinity, a container's cgroup
        # quota), not the host's cores as os.cpu_count() does.
        threads = settings.grpc_native_io_threads or max(1, joblib.cpu_count() // 2)
        server: grpc.aio.Server = native_aio.Server(
            interceptors=interceptors, options=options, io_threads=threads
        )
        return server
    return grpc.aio.server(interceptors=interceptors, options=options)


class GrpcServer:
    """Serves the data plane over gRPC; ``port`` holds the bound port after start.

    Args:
        dataplane: the transport-free core.
        settings: the service settings.
        log: a structlog logger.
    """

    def __init__(self, dataplane: DataPlane, settings: ServingSettings, log: Any):
        self.dataplane = dataplane
        self.settings = settings
        self.log = log
        self.port = settings.grpc_port
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None

    async def start(self, *, ready: bool = True) -> None:
        """Bind and start serving; with ``ready`` also turn readiness on (see
        :meth:`set_ready`), else the caller does once every server listens."""
        interceptors = []
        inline = self.settings.auth_tokens
        tokens = load_tokens(
            self.settings.auth_tokens_file, inline.get_secret_value() if inline else None
        )
        if tokens:
            metric = self.dataplane.metrics.auth_failures
            interceptors.append(TokenAuthInterceptor(tokens, metric.inc))
        server = make_server(
            self.settings,
            interceptors,
            [
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            InferenceServicer(self.dataplane, self.log), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server,
            pool=reflection_pool(),
        )
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        creds = server_credentials(self.settings)
        self.port = (
            server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        )
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._server = server
        self._health = health_servicer
        self.log.info(
            "grpc.listening",
            port=self.port,
            tls=creds is not None,
            token_auth=bool(tokens),
            implementation=self.settings.grpc_implementation,
        )
        if ready:
            await self.set_ready(True)

    async def set_ready(self, ready: bool) -> None:
        """Readiness on or off: the data plane's (ServerReady, ModelReady, REST
        ``/v2/health/ready``) and the gRPC health service's (SERVING / NOT_SERVING), which
        Kubernetes' native gRPC probe asks."""
        self.dataplane.set_ready(ready)
        if self._health is None:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting calls; in-flight ones get ``grace_s`` (default: the drain_grace_s
        setting) to finish."""
        if self._server is not None:
            grace = self.settings.drain_grace_s if grace_s is None else grace_s
            await self._server.stop(grace=grace)
            self._server = None
