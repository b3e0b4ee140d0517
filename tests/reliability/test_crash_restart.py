"""SIGKILL each stateful service mid-stream, restart it, and count losses and duplicates.

Ingestion's own SIGKILL test lives in tests/integration/test_ingestion_pipeline.py
(``test_sigkill_mid_stream_loses_and_duplicates_nothing``); these cover the others.
Every figure a test measures is printed on a ``RELIABILITY`` line (``pytest -s``) and
recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton

from services.monitoring.predlog import read_log
from services.monitoring.testing import load_car_loan, prediction_events, seed_version
from services.serving.testing import census_rows, feature_matrix, fit_model, register_model
from shared import topics
from shared.cli.data import publish_events
from shared.contract import load_contract
from shared.datasets import DatasetCatalog
from shared.events import PredictionGroup
from shared.kafka import client_kwargs
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, DATA, StartService, need_data
from tests.reliability.helpers import (
    CENSUS,
    Load,
    census_events,
    json_records,
    latest_rows,
    metric,
    read_topic,
    report,
    wait_for,
)

# Real services killed and restarted for a minute: in `make test-reliability`, not `make test`.
pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

FAST_TRAINING = {
    "FLYWHEEL_TRAINING_SEARCH_BUDGET_S": "2",
    "FLYWHEEL_TRAINING_CV_FOLDS": "2",
    "FLYWHEEL_TRAINING_IMPORTANCE_ROWS": "1000",
    "FLYWHEEL_TRAINING_IMPORTANCE_REPEATS": "1",
}


async def test_validation_sigkill_mid_stream_keeps_rows_equal_to_unique_events(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str
) -> None:
    start_service("ingestion", FLYWHEEL_INGESTION_BATCH_ROWS="2000")
    validation = start_service("validation")
    events = census_events(24_000)
    events += events[:3000]  # replayed events: duplicates ingestion must absorb
    catalog = DatasetCatalog(ArtifactStore(store_uri))
    await publish_events(kafka_settings, events[:12_000])
    # kill once validation has folded in two of the six batches: mid-stream
    await asyncio.to_thread(
        wait_for, lambda: len(catalog.ids(CENSUS.name)) >= 2, 90, "two dataset versions"
    )
    validation.kill()
    versions_at_kill = len(catalog.ids(CENSUS.name))
    await publish_events(kafka_settings, events[12_000:])  # while validation is down
    restarted = start_service("validation")
    unique = {e["event_id"] for e in events}
    await asyncio.to_thread(
        wait_for, lambda: latest_rows(catalog, CENSUS.name) >= len(unique), 120, "every row"
    )
    latest = catalog.latest(CENSUS.name)
    assert latest is not None
    ids = catalog.load_table(latest).column(CENSUS.id).to_pylist()
    accepted_after = metric(
        restarted, "flywheel_validation_batches_total", dataset=CENSUS.name, verdict="accept"
    )
    report(
        "validation_sigkill",
        events_published=len(events),
        unique_events=len(unique),
        versions_at_kill=versions_at_kill,
        versions_final=len(catalog.ids(CENSUS.name)),
        rows=len(ids),
        lost=len(unique - set(ids)),
        duplicates=len(ids) - len(set(ids)),
        batches_accepted_after_restart=accepted_after,
    )
    assert len(ids) == len(unique) == 24_000
    assert set(ids) == unique
    assert accepted_after > 0  # the restart had batches left to validate
    versions = catalog.versions(CENSUS.name)
    batch_ids = [b.batch_id for b in versions[-1].batches]
    assert len(batch_ids) == len(set(batch_ids))  # no batch folded in twice
    assert [v.parent for v in versions[1:]] == [v.id for v in versions[:-1]]


async def test_serving_sigkill_under_load_errors_only_while_down(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str
) -> None:
    need_data("employment_MA_reference.pq")
    contract = load_contract(CONTRACTS / "census_employment.yaml")
    _, onnx = fit_model(contract, census_rows(DATA, 400))
    register_model(Registry(ArtifactStore(store_uri)), contract, onnx, dataset_version="dv1")
    serving = start_service("serving")
    x = feature_matrix(contract, census_rows(DATA, 4, offset=5000)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with Load(serving.ready_info["grpc_address"], [inp]) as load:
        # Long enough that rows answered over 2 s before the kill exist, whose events
        # must all be logged: 300 calls alone take a fraction of a second.
        await asyncio.to_thread(
            wait_for,
            lambda: load.count() >= 300 and time.monotonic() - load.ok[0].answered > 3.0,
            60,
            "warm-up load",
        )
        killed_at = time.monotonic()
        serving.kill()
        acked_before_kill = load.count()
        restarted = start_service("serving")  # same gRPC port (the fixture's env)
        ready_at = time.monotonic()
        await asyncio.to_thread(
            wait_for, lambda: load.count() >= acked_before_kill + 300, 60, "load after restart"
        )
    assert restarted.returncode is None
    ok, errors = list(load.ok), list(load.errors)
    # errors only between the kill and the restarted process's ready line (+ reconnect slack)
    outside = [
        (round(t - killed_at, 2), e)
        for t, e in errors
        if not killed_at - 0.5 <= t <= ready_at + 2.0
    ]
    assert outside == [], (round(ready_at - killed_at, 2), outside[:3])
    served = [pid for a in ok for pid in a.ids]
    assert len(served) == len(set(served))  # prediction ids are unique across processes
    wait_for(lambda: metric(restarted, "flywheel_serving_requests_total") >= 300, 30, "metrics")
    events = json_records(await read_topic(kafka_settings, topics.PREDICTIONS))
    logged = [pid for e in events for pid in PredictionGroup.model_validate(e).prediction_ids()]
    counts: dict[str, int] = {}
    for pid in logged:
        counts[pid] = counts.get(pid, 0) + 1
    duplicates = sum(n - 1 for n in counts.values())
    served_set = set(served)
    # Events leave the process off the response path (a buffer drained every linger
    # interval): a SIGKILL loses the rows answered in the last moments before it.
    before = [pid for a in ok if a.answered < killed_at - 2.0 for pid in a.ids]
    after = [pid for a in ok if a.answered > ready_at for pid in a.ids]
    window = [pid for a in ok if killed_at - 2.0 <= a.answered <= ready_at for pid in a.ids]
    lost_window = [pid for pid in window if pid not in counts]
    report(
        "serving_sigkill",
        acknowledged_rows=len(served),
        acknowledged_requests=len(ok),
        failed_requests=len(errors),
        down_s=round(ready_at - killed_at, 2),
        prediction_events=len(logged),
        duplicates=duplicates,
        missing_before_kill=sum(pid not in counts for pid in before),
        missing_after_restart=sum(pid not in counts for pid in after),
        missing_last_2s_before_kill=len(lost_window),
        unknown_events=len(set(counts) - served_set),
    )
    assert duplicates == 0
    assert before  # the kill came after rows whose events had time to leave
    assert all(pid in counts for pid in before)
    assert all(pid in counts for pid in after)
    assert set(counts) <= served_set  # no event for a row no client was answered
    assert len(errors) > 0  # the kill was felt: this was a real outage


async def test_monitoring_sigkill_mid_window_logs_every_prediction(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str
) -> None:
    from aiokafka import AIOKafkaProducer

    need_data("synthetic_car_loan_reference.csv")
    contract = load_contract(CONTRACTS / "car_loan.yaml")
    reference, analysis = load_car_loan(DATA)
    store = ArtifactStore(store_uri)
    manifest = seed_version(store, contract, reference.iloc[:2000], 1)
    preds = list(prediction_events(contract, analysis.iloc[:12_000], manifest))
    env = {"FLYWHEEL_MONITORING_LOG_FLUSH_ROWS": "1000", "FLYWHEEL_MONITORING_LOG_FLUSH_S": "1"}
    monitoring = start_service("monitoring", **env)
    prefix = f"predictions/{contract.name}"

    async def publish(items: list[Any]) -> None:
        producer = AIOKafkaProducer(**client_kwargs(kafka_settings, "reliability"), acks="all")
        await producer.start()
        try:
            for p in items:
                await producer.send(
                    topics.PREDICTIONS, p.model_dump_json().encode(), key=contract.name.encode()
                )
            await producer.flush()
        finally:
            await producer.stop()

    def logged_ids() -> list[str]:
        out: list[str] = []
        for key in store.list(prefix):
            out += store.get_parquet(key).column("prediction_id").to_pylist()
        return out

    publishing = asyncio.create_task(publish(preds))
    # kill once two log files are flushed: some rows durable, the rest still in memory
    await asyncio.to_thread(
        wait_for, lambda: len(store.list(prefix)) >= 2, 120, "two prediction log files"
    )
    monitoring.kill()
    files_at_kill = len(store.list(prefix))
    logged_at_kill = len(logged_ids())
    assert logged_at_kill < len(preds), "everything was logged before the kill: not mid-stream"
    await publishing
    restarted = start_service("monitoring", **env)
    expected = {p.id for p in preds}

    raw = await asyncio.to_thread(
        wait_for, lambda: (i := logged_ids()) and set(i) >= expected and i, 120, "every row"
    )
    # The log is read through read_log: a replay after a kill between a flush and its
    # commit rewrites rows in another object, and the reader keeps each prediction once.
    ids = read_log(store, "predictions", contract.name)["prediction_id"].to_pylist()
    duplicates = len(ids) - len(set(ids))
    report(
        "monitoring_sigkill",
        predictions_published=len(preds),
        log_files_at_kill=files_at_kill,
        logged_rows_at_kill=logged_at_kill,
        logged_rows=len(ids),
        stored_rows=len(raw),
        lost=len(expected - set(ids)),
        duplicates=duplicates,
    )
    assert restarted.returncode is None
    assert set(ids) == expected
    assert duplicates == 0


async def test_training_sigkill_mid_run_registers_one_version_per_trigger(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str, tmp_path: Path
) -> None:
    # the census contract with a training threshold a 3000-row dataset passes
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    text = (CONTRACTS / "census_employment.yaml").read_text()
    text = text.replace("min_rows: 60000", "min_rows: 2000")
    (contracts / "census_employment.yaml").write_text(
        text.replace("min_new_rows: 20000", "min_new_rows: 1000")
    )
    env = {**FAST_TRAINING, "FLYWHEEL_CONTRACTS": str(contracts)}
    start_service(
        "ingestion", FLYWHEEL_INGESTION_BATCH_ROWS="3000", FLYWHEEL_CONTRACTS=str(contracts)
    )
    start_service("validation", FLYWHEEL_CONTRACTS=str(contracts))
    training = start_service("training", **env)
    await publish_events(kafka_settings, census_events(3000))

    def started(proc: Any) -> bool:
        return any('"training.started"' in line for line in list(proc.tail))

    await asyncio.to_thread(wait_for, lambda: started(training), 120, "a training run")
    training.kill()
    registry = Registry(ArtifactStore(store_uri))
    at_kill = len(registry.versions(CENSUS.name))
    restarted = start_service("training", **env)

    def finished() -> bool:
        return any('"training.finished"' in line for line in list(restarted.tail))

    await asyncio.to_thread(wait_for, finished, 240, "the replayed run to finish")
    versions = registry.versions(CENSUS.name)
    datasets = [v.dataset_version for v in versions]
    report(
        "training_sigkill",
        versions_at_kill=at_kill,
        versions_final=len(versions),
        dataset_versions=len(set(datasets)),
    )
    assert at_kill == 0
    assert len(versions) == 1
    assert len(datasets) == len(set(datasets))
