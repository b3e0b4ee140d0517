"""Container health probes that exit 0 (healthy) or 1 (not), with one line saying why.

``python -m shared.healthcheck grpc HOST:PORT`` asks the standard gRPC health service
(``grpc.health.v1.Health/Check``), the same one Kubernetes' native ``grpc`` probe and
``grpc_health_probe`` call. ``python -m shared.healthcheck http URL`` expects a 2xx answer.
``python -m shared.healthcheck service [NAME]`` derives both from the service's own
settings class (its metrics port, and its gRPC port when it has one), so the image's
single ``HEALTHCHECK`` fits all five services; NAME defaults to ``$FLYWHEEL_SERVICE``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.settings import ServiceSettings

SERVICE_ENV = "FLYWHEEL_SERVICE"
"""Environment variable naming the service a container runs (``service`` mode)."""
DEFAULT_TIMEOUT_S = 3.0


def check_grpc(
    target: str,
    *,
    service: str = "",
    timeout: float = DEFAULT_TIMEOUT_S,
    ca_file: str | None = None,
) -> str | None:
    """Ask the gRPC health service at ``target``; None when it answers SERVING, else why not.

    Args:
        target: ``host:port``.
        service: the health service name to ask about ("" = the whole server).
        timeout: seconds for the whole call.
        ca_file: PEM bundle to verify a TLS server with; None for a plaintext channel.
    """
    if ca_file is None:
        channel = grpc.insecure_channel(target)
    else:
        with open(ca_file, "rb") as f:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(f.read()))
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else None
        name = code.name if code is not None else "UNKNOWN"
        return f"grpc {target}: {name} {err.details() if isinstance(err, grpc.Call) else err}"
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"grpc {target}: service {service!r} is {status}"
    return None


def check_http(url: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """GET ``url``; None on a 2xx answer, else why not."""
    if not url.startswith(("http://", "https://")):
        return f"http {url}: not an http(s) URL"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            status = int(reply.status)
    except urllib.error.HTTPError as err:
        return f"http {url}: status {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return f"http {url}: {getattr(err, 'reason', err)}"
    return None if 200 <= status < 300 else f"http {url}: status {status}"


def service_settings(name: str) -> ServiceSettings:
    """The settings of service ``name``, read from the environment like the service does.

    Raises:
        ValueError: when ``services.<name>.settings`` has no settings class.
    """
    module = importlib.import_module(f"services.{name}.settings")
    classes = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, ServiceSettings)
        and cls is not ServiceSettings
        and cls.__module__ == module.__name__
    ]
    if len(classes) != 1:
        raise ValueError(f"services.{name}.settings defines {len(classes)} settings classes")
    return classes[0]()


def check_service(
    name: str, *, host: str = "127.0.0.1", timeout: float = DEFAULT_TIMEOUT_S
) -> str | None:
    """Probe a Flywheel service: its metrics endpoint, then its gRPC health if it has a port.

    A service serving gRPC over TLS is probed on its metrics endpoint only (see below).

    Args:
        name: the service (``ingestion``, ``serving``, ...).
        host: where it listens, seen from the probe.
        timeout: seconds per probe.
    """
    try:
        settings = service_settings(name)
    except (ImportError, ValueError) as err:
        return f"service {name!r}: {err}"
    if settings.metrics_port == 0:
        return f"service {name!r}: metrics port is 0 (picked at random), nothing to probe"
    problem = check_http(f"http://{host}:{settings.metrics_port}/metrics", timeout=timeout)
    if problem is not None:
        return problem
    grpc_port = getattr(settings, "grpc_port", None)
    # Over TLS the probe could not verify a certificate issued for the service's DNS name
    # from 127.0.0.1 (nor present a client certificate for mTLS): the metrics endpoint
    # stands in, and `grpc --ca-file` probes TLS servers explicitly.
    if getattr(settings, "tls_cert_file", None):
        return None
    # Serving's gRPC health turns NOT_SERVING with its readiness (from the start of a
    # drain, and until its models are loaded), the same signal as REST /v2/health/ready.
    if isinstance(grpc_port, int) and grpc_port > 0:
        return check_grpc(f"{host}:{grpc_port}", timeout=timeout)
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.healthcheck",
        description="Exit 0 if the target is healthy, 1 if not.",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    modes = parser.add_subparsers(dest="mode", required=True)
    g = modes.add_parser("grpc", help="standard gRPC health service at HOST:PORT")
    g.add_argument("target", metavar="HOST:PORT")
    g.add_argument("--service", default="", help="health service name ('' = whole server)")
    g.add_argument("--ca-file", default=None, help="PEM CA bundle: use TLS")
    h = modes.add_parser("http", help="a 2xx answer from URL")
    h.add_argument("url", metavar="URL")
    s = modes.add_parser("service", help="a Flywheel service, from its settings")
    s.add_argument("name", nargs="?", default=None, help=f"service name (default ${SERVICE_ENV})")
    s.add_argument("--host", default="127.0.0.1", help="where the service listens")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one probe; the exit code: 0 healthy, 1 unhealthy or misconfigured.

    Docker reserves exit code 2 in health checks, so argument errors exit 1 too.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return 0 if exc.code in (0, None) else 1
    problem: str | None
    if args.mode == "grpc":
        problem = check_grpc(
            args.target, service=args.service, timeout=args.timeout, ca_file=args.ca_file
        )
    elif args.mode == "http":
        problem = check_http(args.url, timeout=args.timeout)
    else:
        name = args.name or os.environ.get(SERVICE_ENV, "")
        if not name:
            print(f"unhealthy: no service named (argument or ${SERVICE_ENV})", file=sys.stderr)
            return 1
        problem = check_service(name, host=args.host, timeout=args.timeout)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
