"""Fixtures shared by every suite: a real broker per test, service processes, a store.

Each test that asks for ``broker`` gets its own Tansu process on a free port (it starts
in ~50 ms), so topics and offsets never leak between tests. Set
``FLYWHEEL_TEST_BOOTSTRAP`` to run the same tests against an existing Kafka cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.embedded import EmbeddedBroker, free_port
from shared.procs import ServiceProcess
from shared.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts"
DATA = ROOT / "var" / "data"
# Tansu joins a consumer group in about half the session timeout: keep it short.
TEST_SESSION_TIMEOUT_MS = 3000
DEPLOY_KEY = b"flywheel-test-deploy-key-0123456789"
"""The deploy key every test stack shares (tests sign deployments with it)."""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """Bootstrap address of a fresh broker (or of FLYWHEEL_TEST_BOOTSTRAP)."""
    external = os.environ.get("FLYWHEEL_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    with EmbeddedBroker(free_port(), log=tmp_path / "broker.log") as b:
        yield b.bootstrap


@pytest.fixture
def kafka_settings(broker: str) -> KafkaSettings:
    """Kafka settings pointing at the test broker, with test-friendly group timeouts."""
    return KafkaSettings(
        bootstrap_servers=broker,
        session_timeout_ms=TEST_SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=300,
        partitions=3,
    )


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    """A fresh, empty artifact store."""
    return f"file://{tmp_path / 'store'}"


@pytest.fixture
def service_env(broker: str, store_uri: str) -> dict[str, str]:
    """Environment for service processes: test broker, fresh store, free metrics ports."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker,
        "KAFKA_SESSION_TIMEOUT_MS": str(TEST_SESSION_TIMEOUT_MS),
        "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
        "FLYWHEEL_STORE": store_uri,
        "FLYWHEEL_CONTRACTS": str(CONTRACTS),
        "FLYWHEEL_LOG_LEVEL": "INFO",
        "FLYWHEEL_DEPLOY_KEY": DEPLOY_KEY.decode(),
    }
    for name in ("INGESTION", "VALIDATION", "TRAINING", "SERVING", "MONITORING"):
        env[f"FLYWHEEL_{name}_METRICS_PORT"] = "0"
    env["FLYWHEEL_SERVING_GRPC_PORT"] = str(free_port())
    env["FLYWHEEL_SERVING_HTTP_PORT"] = "0"  # REST: a free port, named in the ready record
    return env


StartService = Callable[..., ServiceProcess]


@pytest.fixture
def start_service(service_env: dict[str, str]) -> Iterator[StartService]:
    """Start ``python -m services.<name>`` and wait for its ready line.

    Every process started here is stopped with SIGTERM at teardown, and must exit 0
    unless the test killed it itself.
    """
    started: list[tuple[ServiceProcess, bool]] = []

    def start(name: str, timeout: float = 90.0, **env: str) -> ServiceProcess:
        proc = ServiceProcess(name, env={**service_env, **env})
        proc.start()
        started.append((proc, True))
        proc.wait_ready(timeout)
        return proc

    yield start
    failures = []
    for proc, _ in reversed(started):
        if proc.returncode is not None:
            continue  # killed or exited inside the test; the test checks that itself
        code = proc.terminate()
        if code != 0:
            failures.append(f"{proc.name} exited {code}:\n" + "\n".join(list(proc.tail)[-30:]))
    assert not failures, "\n\n".join(failures)


def need_data(*names: str) -> list[Path]:
    """Paths of sample data files (fetched by ``make install``)."""
    paths = [DATA / n for n in names]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        pytest.fail(f"sample data missing ({missing}); run `make install`")
    return paths
