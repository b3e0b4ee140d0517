"""Service processes: spawn ``python -m services.<name>`` and wait for its ready line.

Used by ``flywheel up`` (with restarts) and by the test suite (real processes). The
child's stdout is drained by a thread so it can never block on a full pipe; every
line is kept in a bounded tail and optionally passed to ``on_line``.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from shared.service import READY_EVENT

SERVICES = ("ingestion", "validation", "training", "serving", "monitoring")


def parse_line(line: str) -> dict[str, Any] | None:
    """A JSON log record, or None for anything else."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


class ServiceProcess:
    """One service child process.

    Args:
        name: service name (``services.<name>`` is run).
        env: extra environment variables for the child.
        on_line: called with every output line (from the reader thread).
    """

    def __init__(
        self,
        name: str,
        env: Mapping[str, str] | None = None,
        on_line: Callable[[str, str], None] | None = None,
    ):
        self.name = name
        self.env = dict(env or {})
        self.on_line = on_line
        self.tail: collections.deque[str] = collections.deque(maxlen=500)
        self.ready_info: dict[str, Any] = {}
        self._ready = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._proc.pid if self._proc else None

    @property
    def ready(self) -> bool:
        """True once the running child has logged ``service.ready``."""
        return bool(self.ready_info) and self.returncode is None

    def last_error(self) -> str:
        """The child's last error record (``event: error``), else its last plain line
        (a traceback's final line), else ``""``."""
        plain = ""
        for line in reversed(self.tail):
            rec = parse_line(line)
            if rec is None:
                plain = plain or line.strip()
                continue
            if rec.get("level") in ("error", "critical"):
                return f"{rec.get('event')}: {rec.get('error', '')}".rstrip(": ")
        return plain

    @property
    def returncode(self) -> int | None:
        """Exit code once the child has exited, else None."""
        return self._proc.poll() if self._proc else None

    def start(self) -> None:
        """Spawn the child (non-blocking); see :meth:`wait_ready`."""
        self._ready.clear()
        self.ready_info = {}
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLYWHEEL_LOG_FORMAT": "json", **self.env}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            rec = parse_line(line)
            if rec is not None and rec.get("event") == READY_EVENT:
                self.ready_info = rec
                self._ready.set()
            if self.on_line:
                self.on_line(self.name, line)
        self._ready.set()  # exited: wake waiters so they see the failure

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Block until the child logs ``service.ready``; its ready record."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self.name} not ready in {timeout}s:\n" + "\n".join(self.tail))
        if not self.ready_info:
            raise RuntimeError(
                f"{self.name} exited ({self.returncode}) before ready:\n" + "\n".join(self.tail)
            )
        return self.ready_info

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader:
            self._reader.join(timeout=5)
        return self._proc.returncode

    def kill(self) -> None:
        """SIGKILL the child (fault injection)."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._reader:
            self._reader.join(timeout=5)
