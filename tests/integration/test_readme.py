"""The README's shell examples marked ``bash runnable`` work word for word.

A new user runs them from the checkout with the stack up (``make run DEMO=0`` is
``flywheel up``), so this test does the same: ``flywheel up`` on the README's default
ports, then every runnable block in bash from the repository root, then checks what the
blocks promise (rows in a dataset version, the bad event in the DLQ); the "Bring your own
data" guide's blocks wait for their own outcomes (a champion, a live metric) with a bound.
Only the artifact store is redirected to a temporary folder, through the documented
``FLYWHEEL_STORE``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, need_data
from tests.flywheel_up import flywheel_up

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
DEFAULT_PORTS = (9092, 8001, 9101, 9102, 9103, 9104, 9105)
BLOCK = re.compile(r"^```bash runnable\n(.*?)^```", re.MULTILINE | re.DOTALL)


def runnable_blocks(text: str) -> list[str]:
    """The bodies of the README's ```bash runnable fences, in order."""
    return BLOCK.findall(text)


def test_the_readme_marks_runnable_examples() -> None:
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "no ```bash runnable block in README.md"
    assert all(b.strip() for b in blocks)


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, str]]:
    """``flywheel up`` on the README's default ports; yields the environment it runs with."""
    busy = [p for p in DEFAULT_PORTS if _port_in_use(p)]
    if busy:
        pytest.skip(f"the README's default ports are in use here: {busy}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "FLYWHEEL_"))}
    env.update(FLYWHEEL_STORE=f"file://{tmp_path / 'store'}", COLUMNS="200")
    with flywheel_up(["--log-dir", str(tmp_path / "logs")], env, cwd=ROOT):
        yield env


def _flywheel_json(env: dict[str, str], *args: str) -> object:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "flywheel"), *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.timeout(900)  # the "Bring your own data" guide trains and watches a model
def test_the_runnable_examples_work_word_for_word(stack: dict[str, str]) -> None:
    need_data("employment_MA_reference.pq", "diabetes_reference.pq", "diabetes_analysis.pq")
    for block in runnable_blocks(README.read_text(encoding="utf-8")):
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=ROOT,
            env=stack,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        output = f"{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        assert done.returncode == 0, output

    # What the publishing example promises, once ingestion's batch window has passed.
    deadline = time.monotonic() + 90
    rows, reasons = 0, []
    while time.monotonic() < deadline and not (rows == 2000 and reasons):
        versions = _flywheel_json(stack, "datasets", "census_employment")
        assert isinstance(versions, list)
        rows = max((int(v["rows"]) for v in versions), default=0)
        letters = _flywheel_json(stack, "dlq", "--limit", "5")
        assert isinstance(letters, list)
        reasons = [d for d in letters if d.get("event_id") == "x1"]
        time.sleep(0.5)  # polling an eventual outcome (batch window) with a deadline
    assert rows == 2000
    assert reasons, "the README's bad event never reached the DLQ"
    assert reasons[0]["field"]
