"""Ingestion + validation as real processes on a real broker: the issue's "done when" list."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import rejected
from shared.cli.data import publish_events, read_dlq, rows_to_events
from shared.contract import load_contract
from shared.datasets import DatasetCatalog
from shared.procs import ServiceProcess
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, StartService, need_data

pytestmark = pytest.mark.integration

CENSUS = load_contract(CONTRACTS / "census_employment.yaml")


def census_events(limit: int | None = None) -> list[dict[str, Any]]:
    (path,) = need_data("employment_MA_reference.pq")
    table = pq.read_table(path)
    return rows_to_events(CENSUS, table if limit is None else table.slice(0, limit))


def metric(proc: ServiceProcess, name: str, **labels: str) -> float:
    """Current value of one sample on a service's metrics endpoint (0 when absent)."""
    url = f"http://127.0.0.1:{proc.ready_info['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def wait_for(cond: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy (eventual outcomes, with a deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def latest_rows(catalog: DatasetCatalog, name: str) -> int:
    latest = catalog.latest(name)
    return latest.rows if latest else 0


async def test_census_reference_becomes_dataset_versions_and_replays_add_nothing(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str
) -> None:
    ingestion = start_service("ingestion")
    start_service("validation")
    events = census_events()
    assert len(events) == 68_785
    await publish_events(kafka_settings, events)
    catalog = DatasetCatalog(ArtifactStore(store_uri))
    wait_for(lambda: latest_rows(catalog, CENSUS.name) >= 68_785, 90, "all rows validated")
    versions = catalog.versions(CENSUS.name)
    latest = versions[-1]
    assert latest.rows == 68_785
    assert sum(b.rows for b in latest.batches) == 68_785
    assert all(v.profile_uri for v in versions)
    assert [v.parent for v in versions[1:]] == [v.id for v in versions[:-1]]

    # the same file again: every event is a duplicate, no batch, no new version
    await publish_events(kafka_settings, events)
    dup = "flywheel_ingestion_events_total"
    wait_for(
        lambda: metric(ingestion, dup, dataset=CENSUS.name, outcome="duplicate") >= 68_785,
        60,
        "the replay to be recognised",
    )
    assert metric(ingestion, dup, dataset=CENSUS.name, outcome="accepted") == 68_785
    assert catalog.ids(CENSUS.name) == [v.id for v in versions]
    ids = catalog.load_table(latest).column(CENSUS.id).to_pylist()
    assert sorted(ids, key=int) == [e["event_id"] for e in events]


async def test_malformed_events_land_in_the_dlq_with_reasons(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str
) -> None:
    from aiokafka import AIOKafkaProducer

    from shared.kafka import client_kwargs

    ingestion = start_service("ingestion", FLYWHEEL_INGESTION_BATCH_SECONDS="0.3")
    start_service("validation")
    good = census_events(40)
    bad: list[tuple[bytes, str]] = []
    bad += [(b'{"dataset": "census_employment", "event_id": ', "bad_json")] * 3
    bad += [(b"\xff\xfe not json", "bad_json")] * 2
    unknown = {**good[0], "dataset": "no_such_dataset", "event_id": "u"}
    bad += [(json.dumps(unknown).encode(), "unknown_dataset")] * 4
    for i in range(5):
        e = json.loads(json.dumps(good[i]))
        e["event_id"] = f"missing-{i}"
        del e["features"]["AGEP"]
        bad.append((json.dumps(e).encode(), "missing_feature"))
    for i in range(6):
        e = json.loads(json.dumps(good[i]))
        e["event_id"] = f"type-{i}"
        e["features"]["AGEP"] = "forty"
        bad.append((json.dumps(e).encode(), "wrong_type"))
    for i in range(7):
        e = json.loads(json.dumps(good[i]))
        e["event_id"] = f"label-{i}"
        e["label"] = 7
        bad.append((json.dumps(e).encode(), "unknown_label"))
    producer = AIOKafkaProducer(**client_kwargs(kafka_settings, "test"), acks="all")
    await producer.start()
    try:
        for value, _ in bad:
            await producer.send_and_wait("data.events", value, key=b"census_employment")
    finally:
        await producer.stop()
    # good events after the bad ones: the service kept running and still accepts
    await publish_events(kafka_settings, good)
    catalog = DatasetCatalog(ArtifactStore(store_uri))
    wait_for(lambda: latest_rows(catalog, CENSUS.name) == 40, 60, "the good events")

    expected: dict[str, int] = {}
    for _, reason in bad:
        expected[reason] = expected.get(reason, 0) + 1
    deadline = time.monotonic() + 30
    letters = await read_dlq(kafka_settings, 1000)
    while len(letters) < len(bad) and time.monotonic() < deadline:
        letters = await read_dlq(kafka_settings, 1000)
    got: dict[str, int] = {}
    for d in letters:
        got[d.error.split(":", 1)[0]] = got.get(d.error.split(":", 1)[0], 0) + 1
    assert got == expected
    by_reason = {d.error.split(":", 1)[0]: d for d in letters}
    assert by_reason["missing_feature"].field == "features.AGEP"
    assert by_reason["wrong_type"].field == "features.AGEP"
    assert "forty" in by_reason["wrong_type"].error
    assert by_reason["unknown_label"].field == "label"
    assert by_reason["unknown_dataset"].field == "dataset"
    assert by_reason["bad_json"].source_topic == "data.events"
    assert {d.payload_encoding for d in letters if d.error.startswith("bad_json")} == {
        "utf-8",
        "base64",
    }
    # metric counts match exactly
    for reason, n in expected.items():
        ds = "_unknown" if reason in ("bad_json", "unknown_dataset") else CENSUS.name
        assert metric(ingestion, "flywheel_ingestion_dlq_total", dataset=ds, reason=reason) == n
    assert ingestion.returncode is None


async def test_out_of_range_batch_is_quarantined_with_a_report(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str
) -> None:
    from shared.events import BatchQuarantined

    start_service("ingestion", FLYWHEEL_INGESTION_BATCH_ROWS="1000")
    validation = start_service("validation")
    events = census_events(3000)
    await publish_events(kafka_settings, events[:1000])
    store = ArtifactStore(store_uri)
    catalog = DatasetCatalog(store)
    wait_for(lambda: latest_rows(catalog, CENSUS.name) == 1000, 60, "the clean batch")
    broken = events[1000:2000]
    for e in broken[::10]:  # 10% of rows out of the contract's [0, 120] age range
        e["features"]["AGEP"] = 500.0
    await publish_events(kafka_settings, broken)
    wait_for(
        lambda: (
            metric(
                validation,
                "flywheel_validation_batches_total",
                dataset=CENSUS.name,
                verdict="quarantine",
            )
            >= 1
        ),
        60,
        "a quarantine",
    )
    assert latest_rows(catalog, CENSUS.name) == 1000
    outcomes = [
        json.loads(store.get(k))
        for k in store.list(f"validation/{CENSUS.name}/outcomes")
        if "dataset_version" not in json.loads(store.get(k))
    ]
    assert len(outcomes) == 1
    event = BatchQuarantined.model_validate(outcomes[0])
    assert "row_failure_rate" in event.failed_rules
    assert "range:AGEP" in event.failed_rules
    report = store.get_json(event.report_uri)
    assert report["verdict"] == "quarantine"
    rules = {r["rule"]: r for r in report["rules"]}
    assert rules["range:AGEP"]["failed"] == 100
    assert not rules["range:AGEP"]["passed"]
    assert rules["outliers:AGEP"]["failed"] == 100
    assert (
        metric(
            validation,
            "flywheel_validation_row_failures_total",
            dataset=CENSUS.name,
            rule="range:AGEP",
        )
        == 100
    )
    # Every row of the quarantined batch that failed a rule is on record by event id.
    record = rejected.read(store, CENSUS.name, event.batch_id).to_pylist()
    assert {r["event_id"] for r in record} == {e["event_id"] for e in broken[::10]}
    assert {(r["rule"], r["value"]) for r in record} == {("range:AGEP", "500")}

    # A batch with a few bad rows is accepted without them; each one is on record.
    few = events[2000:]
    for e in few[::100]:
        e["features"]["AGEP"] = 500.0
    await publish_events(kafka_settings, few)
    wait_for(lambda: latest_rows(catalog, CENSUS.name) == 1990, 60, "the accepted batch")
    latest = catalog.latest(CENSUS.name)
    assert latest is not None
    kept = set(catalog.load_table(latest).column(CENSUS.id).to_pylist())
    left_out = {e["event_id"] for e in few[::100]}
    assert not kept & left_out
    accepted = rejected.read(store, CENSUS.name, latest.batches[-1].batch_id).to_pylist()
    assert {r["event_id"] for r in accepted} == left_out
    assert (
        metric(
            validation,
            "flywheel_validation_rejected_rows_total",
            dataset=CENSUS.name,
            rule="range:AGEP",
        )
        == 10
    )


async def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    start_service: StartService,
    kafka_settings: KafkaSettings,
    store_uri: str,
) -> None:
    import asyncio

    env = {"FLYWHEEL_INGESTION_BATCH_ROWS": "3000", "FLYWHEEL_INGESTION_MAX_POLL_RECORDS": "1000"}
    ingestion = start_service("ingestion", **env)
    start_service("validation")
    events = census_events(30_000)
    store = ArtifactStore(store_uri)
    publishing = asyncio.create_task(publish_events(kafka_settings, events))

    def some_batches_logged() -> bool:
        return len(store.list(f"ingestion/{CENSUS.name}/batches")) >= 2

    # Poll while the publisher runs on this loop. The kill must come before ingestion has
    # taken every event, which the restarted process's accepted count proves below; the
    # publisher itself may finish first on a loaded machine (it only writes to the broker).
    deadline = time.monotonic() + 60
    while not some_batches_logged():
        assert time.monotonic() < deadline, "no two batches logged in 60 s"
        await asyncio.sleep(0.02)
    ingestion.kill()
    killed_at = len(store.list(f"ingestion/{CENSUS.name}/batches"))
    await publishing
    restarted = start_service("ingestion", **env)
    catalog = DatasetCatalog(ArtifactStore(store_uri))
    wait_for(lambda: latest_rows(catalog, CENSUS.name) >= 30_000, 90, "every row after restart")
    latest = catalog.latest(CENSUS.name)
    assert latest is not None
    ids = catalog.load_table(latest).column(CENSUS.id).to_pylist()
    assert len(ids) == 30_000
    assert set(ids) == {e["event_id"] for e in events}
    assert killed_at >= 2
    assert ingestion.returncode is not None
    # the kill was mid-stream: the restarted process still had events to accept
    accepted = "flywheel_ingestion_events_total"
    assert metric(restarted, accepted, dataset=CENSUS.name, outcome="accepted") > 0
