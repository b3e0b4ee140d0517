"""The training service's triggers as a real process on a real broker: persistent drift
on unchanged data retrains at most once, and a failing run is recorded, alerted on and
retried with back-off."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shared import topics
from shared.contract import Contract
from shared.datasets import DatasetCatalog
from shared.events import DatasetValidated, RetrainRequest
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import StartService
from tests.integration.test_training_service import FAST, cli, publish
from tests.unit.test_training_data import add_dataset, toy_contract, toy_table

pytestmark = pytest.mark.integration


def contracts_dir(tmp_path: Path, contract: Contract) -> Path:
    folder = tmp_path / "contracts"
    folder.mkdir()
    (folder / "toy.yaml").write_text(yaml.safe_dump(contract.model_dump(mode="json")))
    return folder


def announce(settings: KafkaSettings, store: ArtifactStore, tables: list[pa.Table]) -> str:
    latest = DatasetCatalog(store).latest("toy")
    version = add_dataset(store, "toy", tables, parent=latest.id if latest else None)
    event = DatasetValidated(
        dataset="toy",
        dataset_version=version.id,
        rows=version.rows,
        new_rows=tables[-1].num_rows,
        batch_ids=[b.batch_id for b in version.batches],
        report_uri=version.batches[0].report_uri,
    )
    asyncio.run(publish(settings, topics.DATA_VALIDATED, "toy", event))
    return version.id


def scrape(port: object) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def wait_until(what: str, check: Callable[[], bool], within_s: float = 120.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)  # polling a condition with a deadline, not a readiness guess


def test_ten_cool_downs_of_drift_on_unchanged_data_give_one_retrain_on_new_data(
    start_service: StartService,
    kafka_settings: KafkaSettings,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    store = ArtifactStore(service_env["FLYWHEEL_STORE"])
    registry = Registry(store)
    folder = contracts_dir(tmp_path, toy_contract())
    proc = start_service("training", FLYWHEEL_CONTRACTS=str(folder), **FAST)
    port = proc.ready_info["metrics_port"]
    first = toy_table(1500)
    announce(kafka_settings, store, [first])
    # The first run: the fast first candidate v1, then the searched v2.
    wait_until("v1 and v2", lambda: registry.version_numbers("toy") == [1, 2])

    for n in range(10):  # what monitoring sends after each cool-down of persistent drift
        request = RetrainRequest(
            model="toy",
            reason=f"drift on x (window {n})",
            requested_by="monitoring",
            evidence={"trigger": "drift", "model_version": 2},
        )
        asyncio.run(publish(kafka_settings, topics.RETRAIN_REQUESTS, "toy", request))
    # Each request is either a decision of its own or coalesced into the one waiting.
    wait_until("ten decisions", lambda: decided(port) == 10)
    assert registry.version_numbers("toy") == [1, 2]

    announce(kafka_settings, store, [first, toy_table(60, 3, 1500)])  # a little new data
    wait_until("v3", lambda: registry.version_numbers("toy") == [1, 2, 3])
    assert "drift on x" in registry.get("toy", 3).reason
    assert (registry.get("toy", 3).model_extra or {})["candidate"] == "search"
    for n in range(10, 13):
        request = RetrainRequest(model="toy", reason=f"drift ({n})", evidence={"trigger": "drift"})
        asyncio.run(publish(kafka_settings, topics.RETRAIN_REQUESTS, "toy", request))
    wait_until("three more decisions", lambda: decided(port) == 13)
    assert registry.version_numbers("toy") == [1, 2, 3]


def decided(port: object) -> float:
    """Drift requests decided so far: deferred decisions plus triggers coalesced into one."""
    values = {
        (s.name, s.labels.get("outcome")): s.value
        for family in text_string_to_metric_families(scrape(port))
        for s in family.samples
    }
    deferred = values.get(("flywheel_training_runs_total", "deferred"), 0.0)
    coalesced = values.get(("flywheel_training_coalesced_total", None), 0.0)
    return deferred + coalesced


def test_a_failing_run_is_recorded_shown_and_retried_with_back_off(
    start_service: StartService,
    kafka_settings: KafkaSettings,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    store = ArtifactStore(service_env["FLYWHEEL_STORE"])
    body = toy_contract().model_dump(mode="json")
    body["features"].append({"name": "not_in_the_data", "type": "float"})
    folder = contracts_dir(tmp_path, Contract.model_validate(body))
    proc = start_service(
        "training",
        FLYWHEEL_CONTRACTS=str(folder),
        FLYWHEEL_TRAINING_RETRY_BASE_S="0.5",
        FLYWHEEL_TRAINING_RETRY_ATTEMPTS="2",
        **FAST,
    )
    port = proc.ready_info["metrics_port"]
    announce(kafka_settings, store, [toy_table(800)])
    failures = 'flywheel_training_run_failures_total{model="toy",phase="prepare"}'
    wait_until("a first failure and two retries", lambda: f"{failures} 3.0" in scrape(port))
    text = scrape(port)
    assert 'flywheel_training_consecutive_failures{model="toy"} 3.0' in text
    assert 'flywheel_training_runs_total{model="toy",outcome="failed"} 3.0' in text
    runs = Registry(store).runs("toy")
    assert sorted(r["attempt"] for r in runs) == [1, 2, 3]
    assert all(r["status"] == "failed" and "not_in_the_data" in r["error"] for r in runs)
    env = {**service_env, "FLYWHEEL_CONTRACTS": str(folder)}
    shown = cli(env, "models", "toy")
    assert shown.exit_code == 1
    assert "last run failed" in shown.output
    assert "phase prepare" in shown.output
    assert "no automatic retry left" in shown.output
