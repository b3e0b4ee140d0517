"""Every service starts, reports ready and stops cleanly; ``flywheel up`` runs the stack."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from shared.embedded import free_port
from shared.kafka import describe_topics
from shared.procs import SERVICES
from shared.settings import KafkaSettings
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


def _up_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "FLYWHEEL_"))}
    env.update(
        FLYWHEEL_STORE=f"file://{tmp_path / 'store'}",
        FLYWHEEL_CONTRACTS=str(ROOT / "contracts"),
        KAFKA_SESSION_TIMEOUT_MS="3000",
        COLUMNS="200",
    )
    for name in SERVICES:
        env[f"FLYWHEEL_{name.upper()}_METRICS_PORT"] = "0"
    return env


def test_flywheel_up_lists_topics_restarts_a_failing_service_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = _up_env(tmp_path)
    env["FLYWHEEL_SERVING_GRPC_PORT"] = str(free_port())
    env["FLYWHEEL_SERVING_HTTP_PORT"] = str(free_port())
    env["FLYWHEEL_VALIDATION_METRICS_PORT"] = "-1"  # refused by its settings: exits at start
    args = ["--broker-port", str(port), "--log-dir", str(tmp_path / "logs")]
    with flywheel_up(args, env) as lines:
        kcat = subprocess.run(
            [str(ROOT / "tools" / "kcat"), "-b", f"127.0.0.1:{port}", "-L"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        listed = ("data.events", "data.events.dlq", "models.deployments", "predictions")
        if kcat.returncode == 127:  # kcat not installed (make kcat): ask with aiokafka
            kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
            parts = asyncio.run(describe_topics(kafka))
            assert {t: parts.get(t) for t in listed} == dict.fromkeys(listed, 3)
        else:
            assert kcat.returncode == 0, kcat.stderr
            for topic in listed:
                assert f'topic "{topic}" with 3 partitions' in kcat.stdout
        deadline = time.monotonic() + 90
        while sum("validation exited with" in line for line in lines) < 2:
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)  # polling the output for the second restart, bounded above
        output = "".join(lines)
        assert "validation failed to start" in output
        for name in ("ingestion", "training", "serving", "monitoring"):
            [metrics] = re.findall(rf"{name}\s+metrics (http://\S+)", output)
            with urllib.request.urlopen(metrics, timeout=10) as response:  # still running
                assert response.status == 200
    output = "".join(lines)
    assert "restarting in 1s" in output
    assert "restarting in 2s" in output  # back-off doubles
    assert "stopped" in output


def test_flywheel_up_without_a_broker_exits_2_with_one_line(tmp_path: Path) -> None:
    env = _up_env(tmp_path)
    env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run(
        [str(Path(sys.executable).parent / "flywheel"), "up", "--broker-wait", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("error: no usable Kafka broker at 127.0.0.1:")
    assert "Traceback" not in done.stdout + done.stderr
