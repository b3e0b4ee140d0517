"""``flywheel up`` as a child process for tests: started, waited for, stopped cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def flywheel_up(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> Iterator[list[str]]:
    """Run ``flywheel up ARGS`` until the block ends; yields its output lines so far.

    Waits for the "stack running" line (the signal that every service is ready), and on
    exit sends SIGTERM and requires a clean exit (code 0).
    """
    flywheel = str(Path(sys.executable).parent / "flywheel")
    up = subprocess.Popen(
        [flywheel, "up", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    running = threading.Event()

    def read() -> None:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line)
            if "stack running" in line:
                running.set()
        running.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert running.wait(120), "".join(lines)
        assert up.poll() is None, "".join(lines)
        yield lines
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(60)
        reader.join(5)
    assert code == 0, "".join(lines)
