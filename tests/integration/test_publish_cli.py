"""``flywheel publish``, ``flywheel datasets`` and ``flywheel dlq`` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from shared.cli.data import datasets
from shared.datasets import DatasetCatalog
from shared.kafka import client_kwargs
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import StartService, need_data

pytestmark = pytest.mark.integration


def flywheel(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "flywheel"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def latest_rows(catalog: DatasetCatalog) -> int:
    latest = catalog.latest("car_loan")
    return latest.rows if latest else 0


async def test_publish_then_list_datasets_and_dead_letters(
    start_service: StartService,
    service_env: dict[str, str],
    kafka_settings: KafkaSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    start_service("ingestion", FLYWHEEL_INGESTION_BATCH_SECONDS="0.3")
    start_service("validation")
    (loans,) = need_data("synthetic_car_loan_reference.csv")

    done = flywheel(service_env, "publish", "car_loan", str(loans), "--limit", "700")
    assert done.returncode == 0, done.stderr
    assert "published 700 events of car_loan" in done.stderr

    producer = AIOKafkaProducer(**client_kwargs(kafka_settings, "test"))
    await producer.start()
    try:
        await producer.send_and_wait("data.events", b'{"dataset": "car_loan"', key=b"car_loan")
    finally:
        await producer.stop()

    catalog = DatasetCatalog(ArtifactStore(service_env["FLYWHEEL_STORE"]))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if latest_rows(catalog) >= 700:
            break
        await asyncio.sleep(0.2)  # polling an eventual outcome with a deadline
    listed = flywheel(service_env, "datasets", "car_loan", "--json")
    assert listed.returncode == 0, listed.stderr
    versions = json.loads(listed.stdout)
    assert versions[-1]["rows"] == 700
    assert set(versions[-1]) >= {"id", "parent", "rows", "batches", "created", "drift"}

    letters = flywheel(service_env, "dlq", "--json")
    assert letters.returncode == 0, letters.stderr
    (letter,) = json.loads(letters.stdout)
    assert letter["error"].startswith("bad_json")
    assert letter["payload"] == '{"dataset": "car_loan"'

    # the table form, in-process (the same command function the console script runs)
    monkeypatch.setenv("FLYWHEEL_STORE", service_env["FLYWHEEL_STORE"])
    datasets(None, as_json=False)
    assert "car_loan" in capsys.readouterr().out


def test_publish_reports_a_missing_contract_clearly(service_env: dict[str, str]) -> None:
    (loans,) = need_data("synthetic_car_loan_reference.csv")
    done = flywheel(service_env, "publish", "nope", str(loans))
    assert done.returncode == 1
    assert "no contract 'nope'" in done.stderr
