"""Settings of the serving service (env prefix ``FLYWHEEL_SERVING_``)."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings

NATIVE_PLATFORMS = "Linux x86_64 and aarch64 (glibc 2.28 or newer) and macOS arm64"
"""Where pygrpc-native ships wheels (pyproject installs it there only)."""


def native_installed() -> bool:
    """Whether pygrpc-native can be imported here."""
    return importlib.util.find_spec("pygrpc_native") is not None


class ServingSettings(ServiceSettings):
    """Settings of the serving service."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_SERVING_")

    metrics_port: int = 9104
    """Port of the Prometheus metrics endpoint."""
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    """uvloop by default: its loop runs grpc.aio's and aiokafka's callbacks for less CPU
    than the standard library's (+4-9% requests per second at batch 1, +2-3% at batch 64,
    beside the same server on asyncio in one benchmark run). ``asyncio`` is the fallback
    where uvloop is not installed (Windows)."""
    grpc_server: Literal["auto", "native", "grpcio"] = "auto"
    """The gRPC server implementation. ``native``: pygrpc-native's grpc.aio-compatible
    server, whose HTTP/2 and per-call work runs in Rust threads outside the GIL (the same
    servicers, interceptors and status codes; ModelStreamInfer and reflection go to a
    grpc.aio server behind it); 1.2x to 1.6x grpc.aio's requests per second with every
    feature on (docs/benchmarks.md). It has no TLS: set explicitly with ``tls_cert_file``
    it refuses to start. ``grpcio``: grpc.aio, with TLS. ``auto`` (default): ``native``,
    or ``grpcio`` when TLS is configured or pygrpc-native is not installed (it has wheels
    for :data:`NATIVE_PLATFORMS` only); :attr:`grpc_implementation` says which."""
    grpc_native_io_threads: int | None = Field(None, ge=1)
    """Rust I/O threads of the ``native`` gRPC server. None: half the CPUs this process may
    use (affinity and a container's CPU quota counted), at least one
    (one on the 2-core bench, where it served 4-5% more requests per second at batch 1
    than pygrpc-native's default of two, in two interleaved A/B runs; even under
    concurrency), leaving the other cores to the event loop and ONNX Runtime."""
    grpc_host: str = "0.0.0.0"
    """Interface the OIP v2 gRPC server listens on."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """Port of the OIP v2 gRPC server (0 picks a free one)."""
    http_host: str = "0.0.0.0"
    """Interface the OIP v2 REST (HTTP) server listens on."""
    http_port: int = Field(8000, ge=0, le=65535)
    """Port of the OIP v2 REST server, as Triton's (0 picks a free one; the ready record's
    ``http_address`` says which)."""
    advertised_host: str = "127.0.0.1"
    """Host put in the ready record's ``grpc_address`` and ``http_address`` when listening
    on all interfaces."""
    drain_delay_s: float = Field(0.0, ge=0)
    """On SIGTERM, how long the servers keep answering after readiness turned false (gRPC
    health NOT_SERVING, ``/v2/health/ready`` 503), so load balancers and the Kubernetes
    readiness probe stop sending new requests before the ports close."""
    drain_grace_s: float = Field(10.0, ge=0)
    """After the drain delay: how long requests already in flight may take to finish
    before the servers stop anyway."""
    max_batch_size: int = Field(1024, ge=1)
    """Largest number of rows one request may carry, and the adaptive batcher's cap."""
    batch_max_delay_ms: float = Field(0.0, ge=0)
    """Adaptive batching: how long the first queued request may wait for others to join
    one ONNX Runtime call. 0 turns batching off (no added latency)."""
    ort_intra_op_threads: int = Field(1, ge=0)
    """ONNX Runtime intra-op threads per session (0: ORT's default, all cores). One
    thread suits small batches and leaves the other cores to gRPC."""
    event_buffer_rows: int = Field(100_000, ge=1)
    """Bound of the prediction-event buffer, in rows (buffered or awaiting Kafka's ack);
    memory stays bounded when Kafka is behind or down."""
    event_block_ms: int = Field(2_000, ge=0)
    """Longest a request waits for room in a full event buffer before its response; past
    it (Kafka unreachable for longer than the buffer lasts) its events are dropped,
    counted in ``flywheel_serving_prediction_events_dropped_total`` and logged."""
    event_batch_rows: int = Field(2_000, ge=1)
    """Most prediction rows serialised and sent in one publishing round."""
    producer_linger_ms: int = Field(100, ge=0)
    """How long the prediction publisher lets rows accumulate before a send (bigger
    batches, fewer Kafka requests); off the response path."""
    tls_cert_file: str | None = None
    """Server certificate (PEM). Set with ``tls_key_file`` to serve gRPC and REST over TLS."""
    tls_key_file: str | None = None
    """Server private key (PEM)."""
    tls_client_ca_file: str | None = None
    """CA bundle for client certificates; when set, clients must present one (mTLS)."""
    auth_tokens_file: str | None = None
    """File of accepted bearer tokens, one per line (``#`` starts a comment)."""
    auth_tokens: SecretStr | None = None
    """Comma-separated accepted bearer tokens (e.g. from a secret in the environment).
    With tokens configured, inference and metadata calls need ``authorization: Bearer
    <token>``; liveness, readiness and health stay open."""
    server_name: str = "flywheel"
    """Name reported by ServerMetadata."""

    @property
    def grpc_implementation(self) -> Literal["native", "grpcio"]:
        """The gRPC server that runs: ``grpc_server`` with ``auto`` resolved (grpcio when
        TLS is configured, since only grpc.aio serves it, or where pygrpc-native is not
        installed; else native)."""
        if self.grpc_server != "auto":
            return self.grpc_server
        return "native" if not self.tls_configured and native_installed() else "grpcio"

    @property
    def tls_configured(self) -> bool:
        """Whether TLS is asked for (a certificate or a key file set; the servers refuse
        one without the other)."""
        return bool(self.tls_cert_file or self.tls_key_file)

    @model_validator(mode="after")
    def _native_has_no_tls(self) -> ServingSettings:
        if self.grpc_server == "native" and self.tls_configured:
            raise ValueError(
                "grpc_server 'native' (pygrpc-native) has no TLS: use grpc_server 'auto' or "
                "'grpcio' with tls_cert_file, or terminate TLS in front of the native server"
            )
        if self.grpc_server == "native" and not native_installed():
            raise ValueError(
                "grpc_server 'native' needs pygrpc-native, which installs on "
                f"{NATIVE_PLATFORMS} only: use grpc_server 'auto' or 'grpcio' here"
            )
        return self
