"""Every service starts, reports ready and stops cleanly; ``flywheel up`` runs the stack."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shared.embedded import free_port
from shared.procs import SERVICES
from tests.conftest import ROOT, StartService
from tests.flywheel_up import flywheel_up

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", SERVICES)
def test_service_starts_ready_and_stops_on_sigterm(name: str, start_service: StartService) -> None:
    proc = start_service(name)
    assert proc.ready_info["service"] == name
    assert proc.ready_info["metrics_port"] > 0
    assert proc.terminate() == 0
    assert any('"service.stopped"' in line for line in proc.tail)


def test_flywheel_up_lists_topics_in_kcat_and_stops(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "FLYWHEEL_"))}
    env.update(
        FLYWHEEL_STORE=f"file://{tmp_path / 'store'}",
        FLYWHEEL_CONTRACTS=str(ROOT / "contracts"),
        FLYWHEEL_SERVING_GRPC_PORT=str(free_port()),
        KAFKA_SESSION_TIMEOUT_MS="3000",
        COLUMNS="200",
    )
    for name in SERVICES:
        env[f"FLYWHEEL_{name.upper()}_METRICS_PORT"] = "0"
    args = ["--broker-port", str(port), "--log-dir", str(tmp_path / "logs")]
    with flywheel_up(args, env) as lines:
        kcat = subprocess.run(
            [str(ROOT / "tools" / "kcat"), "-b", f"127.0.0.1:{port}", "-L"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if kcat.returncode == 127:
            pytest.skip("kcat is not installed (make kcat installs it)")
        assert kcat.returncode == 0, kcat.stderr
        for topic in ("data.events", "data.events.dlq", "models.deployments", "predictions"):
            assert f'topic "{topic}" with 3 partitions' in kcat.stdout
    output = "".join(lines)
    assert "stopped" in output
    for name in SERVICES:
        assert f"{name}" in output
