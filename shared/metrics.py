"""The Prometheus endpoint of a service, on its own explicit registry (no global state)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


class MetricsServer:
    """Serves ``registry`` on ``host:port`` (port 0 picks a free one).

    Args:
        registry: the service's registry; tests pass a fresh one each time.
        port: listen port.
        host: listen interface.
    """

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0"):
        self.registry = registry
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start listening; ``port`` holds the bound port afterwards."""
        self._server, self._thread = start_http_server(
            self.port, addr=self.host, registry=self.registry
        )
        self.port = int(self._server.server_port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None
