"""shared.healthcheck against real endpoints: a gRPC health service, a metrics server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.serving.settings import ServingSettings
from shared import healthcheck
from shared.embedded import free_port
from shared.metrics import MetricsServer

NAMED = "inference.GRPCInferenceService"


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    """A real gRPC server with the standard health service; (address, servicer)."""
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)


@pytest.fixture
async def metrics_port() -> AsyncIterator[int]:
    """Port of a running Prometheus endpoint (the one every service starts)."""
    server = MetricsServer(CollectorRegistry(), 0, "127.0.0.1")
    await server.start()
    try:
        yield server.port
    finally:
        await server.stop()


def test_grpc_serving_is_healthy(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set(NAMED, health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.check_grpc(address) is None
    assert healthcheck.check_grpc(address, service=NAMED) is None


def test_grpc_not_serving_says_so(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    problem = healthcheck.check_grpc(address)
    assert problem is not None
    assert "NOT_SERVING" in problem


def test_grpc_unknown_service_is_not_found(
    health_server: tuple[str, health.HealthServicer],
) -> None:
    address, _ = health_server
    problem = healthcheck.check_grpc(address, service="no.such.Service")
    assert problem is not None
    assert "NOT_FOUND" in problem


def test_grpc_nothing_listening_is_unhealthy() -> None:
    problem = healthcheck.check_grpc(f"127.0.0.1:{free_port()}", timeout=1.0)
    assert problem is not None
    assert "UNAVAILABLE" in problem or "DEADLINE_EXCEEDED" in problem


def test_http_metrics_endpoint_is_healthy(metrics_port: int) -> None:
    assert healthcheck.check_http(f"http://127.0.0.1:{metrics_port}/metrics") is None


def test_http_errors_are_unhealthy() -> None:
    dead = healthcheck.check_http(f"http://127.0.0.1:{free_port()}/metrics", timeout=1.0)
    assert dead is not None
    assert "refused" in dead.lower()
    scheme = healthcheck.check_http("ftp://example.invalid/")
    assert scheme is not None
    assert "not an http(s) URL" in scheme


def test_service_mode_reads_the_metrics_port_from_the_settings(
    metrics_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_VALIDATION_METRICS_PORT", str(metrics_port))
    assert healthcheck.check_service("validation") is None
    monkeypatch.setenv("FLYWHEEL_VALIDATION_METRICS_PORT", str(free_port()))
    problem = healthcheck.check_service("validation", timeout=1.0)
    assert problem is not None
    assert "/metrics" in problem


def test_service_mode_refuses_what_it_cannot_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_TRAINING_METRICS_PORT", "0")
    random_port = healthcheck.check_service("training")
    assert random_port is not None
    assert "port is 0" in random_port
    unknown = healthcheck.check_service("nosuchservice")
    assert unknown is not None
    assert "nosuchservice" in unknown


class _GrpcServingSettings(ServingSettings):
    """Serving settings with a gRPC port, as the serving service declares it."""

    grpc_port: int = 0
    """Port of the gRPC server."""
    tls_cert_file: str | None = None
    """Server certificate: set means gRPC is served over TLS."""


def test_service_mode_also_asks_the_grpc_health_service(
    metrics_port: int,
    health_server: tuple[str, health.HealthServicer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, servicer = health_server
    grpc_port = int(address.rpartition(":")[2])
    settings = _GrpcServingSettings(metrics_port=metrics_port, grpc_port=grpc_port)
    monkeypatch.setattr(healthcheck, "service_settings", lambda name: settings)
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.check_service("serving") is None
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    problem = healthcheck.check_service("serving")
    assert problem is not None
    assert "NOT_SERVING" in problem


def test_command_line_exit_codes(metrics_port: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != healthcheck.SERVICE_ENV}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shared.healthcheck", "--timeout", "1", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    healthy = run("http", f"http://127.0.0.1:{metrics_port}/metrics")
    assert healthy.returncode == 0, healthy.stderr
    dead = run("grpc", f"127.0.0.1:{free_port()}")
    assert dead.returncode == 1
    assert dead.stderr.startswith("unhealthy: grpc")
    # Docker reserves exit code 2 in health checks: misconfiguration is "unhealthy" (1)
    nameless = run("service")
    assert nameless.returncode == 1
    assert healthcheck.SERVICE_ENV in nameless.stderr
    assert healthcheck.main(["no-such-mode"]) == 1


def test_service_mode_over_tls_probes_the_metrics_endpoint_only(
    metrics_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nothing listens: only a gRPC probe would notice
    tls = _GrpcServingSettings(
        metrics_port=metrics_port, grpc_port=port, tls_cert_file="/etc/flywheel/tls.crt"
    )
    monkeypatch.setattr(healthcheck, "service_settings", lambda name: tls)
    assert healthcheck.check_service("serving") is None
    plain = _GrpcServingSettings(metrics_port=metrics_port, grpc_port=port)
    monkeypatch.setattr(healthcheck, "service_settings", lambda name: plain)
    problem = healthcheck.check_service("serving", timeout=1.0)
    assert problem is not None
    assert problem.startswith("grpc ")
