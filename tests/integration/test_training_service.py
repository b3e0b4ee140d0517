"""The training service as a real process on a real broker.

Dataset versions are written straight into the catalog and announced on
``data.validated``, as validation does; the tests watch ``models.registered`` and
``models.deployments`` and drive the ``flywheel`` model commands.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from typer.testing import CliRunner

from shared import topics
from shared.cli.main import app
from shared.events import DatasetValidated, Event, RetrainRequest
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, StartService, need_data
from tests.unit.test_training_core import lossy_table
from tests.unit.test_training_data import add_dataset

pytestmark = pytest.mark.integration

FAST = {
    "FLYWHEEL_TRAINING_SEARCH_BUDGET_S": "1",
    "FLYWHEEL_TRAINING_MAX_TRAIN_ROWS": "4000",
    "FLYWHEEL_TRAINING_CV_FOLDS": "2",
    "FLYWHEEL_TRAINING_IMPORTANCE_ROWS": "1000",
    "FLYWHEEL_TRAINING_IMPORTANCE_REPEATS": "1",
}


async def publish(settings: KafkaSettings, topic: str, key: str, event: Event) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, event.model_dump_json().encode(), key=key.encode())
    finally:
        await producer.stop()


async def publish_raw(settings: KafkaSettings, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"lossy")
    finally:
        await producer.stop()


async def collect(
    settings: KafkaSettings,
    wanted: dict[str, Callable[[list[dict[str, Any]]], bool]],
    within_s: float = 120.0,
) -> dict[str, list[dict[str, Any]]]:
    """Read ``wanted`` topics from the start until each one's condition holds."""
    consumer = AIOKafkaConsumer(
        *wanted, bootstrap_servers=settings.servers, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    seen: dict[str, list[dict[str, Any]]] = {t: [] for t in wanted}
    deadline = time.monotonic() + within_s
    try:
        while not all(cond(seen[t]) for t, cond in wanted.items()):
            assert time.monotonic() < deadline, f"timed out; seen {seen}"
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                seen[tp.topic].extend(json.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return seen


def cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def announce(settings: KafkaSettings, store: ArtifactStore, name: str, table: pa.Table) -> str:
    version = add_dataset(store, name, [table])
    event = DatasetValidated(
        dataset=name,
        dataset_version=version.id,
        rows=table.num_rows,
        new_rows=table.num_rows,
        batch_ids=[b.batch_id for b in version.batches],
        report_uri=version.batches[0].report_uri,
    )
    asyncio.run(publish(settings, topics.DATA_VALIDATED, name, event))
    return version.id


def test_census_reference_trains_registers_promotes_and_reproduces(
    start_service: StartService,
    kafka_settings: KafkaSettings,
    service_env: dict[str, str],
) -> None:
    [path] = need_data("employment_MA_reference.pq")
    store = ArtifactStore(service_env["FLYWHEEL_STORE"])
    start_service("training", **FAST)
    dataset_version = announce(kafka_settings, store, "census_employment", pq.read_table(path))

    def two(events: list[dict[str, Any]]) -> bool:
        return len(events) == 2

    seen = asyncio.run(
        collect(kafka_settings, {topics.MODELS_REGISTERED: two, topics.MODELS_DEPLOYMENTS: two})
    )
    # The fast first candidate answers first; the searched model follows, gated against it.
    fast, registered = seen[topics.MODELS_REGISTERED]
    assert (fast["version"], registered["version"]) == (1, 2)
    for event in (fast, registered):
        assert event["promoted"] is True
        assert event["dataset_version"] == dataset_version
        assert all(event["gates"].values())
    assert "beats_champion" in registered["gates"]
    deployments = seen[topics.MODELS_DEPLOYMENTS]
    assert [(d["action"], d["version"]) for d in deployments] == [("promote", 1), ("promote", 2)]

    registry = Registry(store)
    first = registry.verify("census_employment", 1)
    assert (first.model_extra or {})["candidate"] == "fast_first"
    assert first.parity.passed
    manifest = registry.verify("census_employment", 2)
    extra = manifest.model_extra or {}
    assert (extra["candidate"], extra["fast_first_version"]) == ("search", 1)
    assert registry.aliases("census_employment") == {"champion": 2, "challenger": None}
    assert manifest.reason.startswith("first model")
    assert manifest.parity.passed
    assert manifest.parity.rows == 13757
    assert manifest.metrics["roc_auc"] > 0.85
    assert set(manifest.group_metrics) == {"SEX", "RAC1P"}
    assert extra["holdout"]["first_id"] == "55028"
    assert "latest id" in extra["holdout"]["description"]
    assert {"scikit-learn", "skl2onnx", "onnxruntime", "numpy"} <= set(manifest.library_versions)
    assert extra["feature_importance"][0]["feature"] == "AGEP"
    assert extra["runs_tried"] >= 3
    assert extra["interpretable_baseline"]["coefficients"]

    listed = cli(service_env, "models", "census_employment", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [r["version"] for r in rows] == [1, 2]
    assert rows[1]["aliases"] == ["champion"]
    assert rows[1]["primary_metric"] == "roc_auc"
    runs = json.loads(cli(service_env, "runs", "census_employment", "--json").output)
    searched = next(r for r in runs if r["version"] == 2)
    assert len(searched["candidates"]) == extra["runs_tried"]
    card = cli(service_env, "model", "census_employment", "2", "--json")
    assert json.loads(card.output)["onnx_sha256"] == manifest.onnx_sha256

    for version in ("1", "2"):  # the fast candidate too: its row cap is in its record
        reproduced = cli(
            service_env, "reproduce", "census_employment", version, "--threads", "1", "--json"
        )
        assert reproduced.exit_code == 0, reproduced.output
        assert json.loads(reproduced.output)["passed"] is True


def test_a_worse_model_is_refused_and_rollbacks_reach_the_alias_history(
    start_service: StartService,
    kafka_settings: KafkaSettings,
    service_env: dict[str, str],
) -> None:
    [path] = need_data("employment_MA_reference.pq")
    store = ArtifactStore(service_env["FLYWHEEL_STORE"])
    first = start_service("training", **FAST)
    announce(kafka_settings, store, "census_employment", pq.read_table(path))
    # The first run: the fast first candidate v1, then the searched v2 (the champion).
    first_seen = asyncio.run(
        collect(kafka_settings, {topics.MODELS_REGISTERED: lambda s: len(s) == 2})
    )
    assert [e["promoted"] for e in first_seen[topics.MODELS_REGISTERED]] == [True, True]
    assert first.terminate() == 0

    # The test hook flips most training labels: a deliberately worse challenger.
    start_service("training", FLYWHEEL_TRAINING_CORRUPT_LABEL_SHARE="0.7", **FAST)
    request = RetrainRequest(model="census_employment", reason="corrupted slice test")
    asyncio.run(publish(kafka_settings, topics.RETRAIN_REQUESTS, "census_employment", request))
    seen = asyncio.run(collect(kafka_settings, {topics.MODELS_REGISTERED: lambda s: len(s) == 3}))
    worse = seen[topics.MODELS_REGISTERED][2]
    assert worse["version"] == 3
    assert worse["promoted"] is False
    assert worse["gates"]["beats_champion"] is False
    assert "corrupted slice test" in worse["reason"]
    registry = Registry(store)
    manifest = registry.get("census_employment", 3)
    assert "vs champion" in manifest.gates["beats_champion"].detail
    assert registry.aliases("census_employment")["champion"] == 2

    # A failed gate is not promotable without naming it in an override.
    blocked = cli(service_env, "promote", "census_employment", "3", "--reason", "try it")
    assert blocked.exit_code == 1
    assert "--override beats_champion" in blocked.output
    never = cli(
        service_env, "approve", "census_employment", "3", "--override", "parity", "--reason", "x"
    )
    assert never.exit_code == 1
    assert "never" in never.output
    # A person approves it overriding the failed gates, promotes it, then rolls back:
    # training records each (who, why, which gates) in the alias history.
    failed = sorted(n for n, g in manifest.gates.items() if not g.passed)
    overrides = [arg for gate in failed for arg in ("--override", gate)]
    approved = cli(
        service_env,
        *("approve", "census_employment", "3", *overrides),
        *("--reason", "accepted for the slice test", "--by", "cy", "--wait", "30"),
    )
    assert approved.exit_code == 0, approved.output
    promoted = cli(
        service_env,
        *("promote", "census_employment", "3", "--reason", "try it", "--by", "ann"),
        *("--wait", "30"),
    )
    assert promoted.exit_code == 0, promoted.output
    assert registry.aliases("census_employment")["champion"] == 3
    rolled = cli(
        service_env,
        *("rollback", "census_employment", "--reason", "worse", "--actor", "ann", "--wait", "30"),
    )
    assert rolled.exit_code == 0, rolled.output
    assert registry.aliases("census_employment")["champion"] == 2
    history = registry.history("census_employment")
    assert [(c.alias, c.version, c.actor, c.reason) for c in history[-3:]] == [
        ("approval", 3, "user:cy", "accepted for the slice test"),
        ("champion", 3, "user:ann", "try it"),
        ("champion", 2, "user:ann", "worse"),
    ]
    assert history[-3].detail["overrides"] == failed
    listed = json.loads(cli(service_env, "models", "census_employment", "--json").output)
    assert [(r["version"], r["serving"], r["approved_by"]) for r in listed] == [
        (1, "-", []),
        (2, "champion", []),
        (3, "-", ["user:cy"]),
    ]
    assert listed[2]["overridden_gates"] == failed
    # A request signed with another key is refused by training and recorded nowhere.
    forged = cli(
        {**service_env, "FLYWHEEL_DEPLOY_KEY": "not-the-stack-key-0123456789"},
        *("promote", "census_employment", "3", "--reason", "forged", "--wait", "3"),
    )
    assert forged.exit_code == 1
    assert registry.history("census_employment") == history
    missing = cli(service_env, "reproduce", "census_employment", "7")
    assert missing.exit_code == 1


def test_an_export_that_disagrees_with_sklearn_fails_the_parity_gate(
    start_service: StartService,
    kafka_settings: KafkaSettings,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    (contracts / "lossy.yaml").write_text(
        "name: lossy\ntask: classification\nid: id\n"
        "label: {name: y, classes: [0, 1]}\n"
        "features:\n  - {name: a, type: float}\n  - {name: b, type: float}\n"
        "training: {min_rows: 100}\n"
        # No float32 export is within 1e-12 of sklearn: every version fails parity.
        "promotion: {parity_atol: 1.0e-12, parity_rtol: 0.0}\n"
    )
    store = ArtifactStore(service_env["FLYWHEEL_STORE"])
    proc = start_service("training", FLYWHEEL_CONTRACTS=str(contracts), **FAST)
    asyncio.run(publish_raw(kafka_settings, topics.DATA_VALIDATED, b"{not json"))
    table = lossy_table()
    announce(kafka_settings, store, "lossy", table)
    # The fast first candidate and the searched model.
    seen = asyncio.run(collect(kafka_settings, {topics.MODELS_REGISTERED: lambda s: len(s) == 2}))
    for registered in seen[topics.MODELS_REGISTERED]:
        assert registered["gates"]["parity"] is False
        assert registered["promoted"] is False
    manifest = Registry(store).get("lossy", 2)
    assert manifest.parity.label_agreement < 1.0 or manifest.parity.max_abs_diff > 1e-12
    port = proc.ready_info["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        scraped = response.read().decode()
    assert (
        'flywheel_training_events_total{outcome="rejected",topic="data.validated"} 1.0' in scraped
    )
    assert 'flywheel_training_runs_total{model="lossy",outcome="refused"} 1.0' in scraped
    env = {**service_env, "FLYWHEEL_CONTRACTS": str(contracts)}
    refused = cli(env, "promote", "lossy", "1", "--reason", "force it")
    assert refused.exit_code == 1
    assert "parity" in refused.output
    assert CONTRACTS.exists()
