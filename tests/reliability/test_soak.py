"""Memory stays flat over a soak: bounded dedup index, join window and buffers.

Each test drives one service with wave after wave of new data, well past the size of its
bounded state, and compares the process's RSS after the second wave (allocators and
caches warm) with its RSS after the last. The bounds are loose enough for allocator
noise and tight enough to catch state that grows with the data: each soak pushes
several times the bound's worth of data through. The bounded structures themselves are
checked through their gauges.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaProducer

from services.monitoring.testing import load_car_loan, prediction_events, seed_version
from services.serving.testing import census_rows, feature_matrix, fit_model, register_model
from shared import topics
from shared.cli.data import publish_events
from shared.contract import load_contract
from shared.events import Feedback
from shared.kafka import client_kwargs
from shared.procs import ServiceProcess
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, DATA, StartService, need_data
from tests.reliability.helpers import (
    CENSUS,
    Load,
    census_events,
    metric,
    report,
    rss_kib,
    wait_for,
)

# Minutes of sustained load: in `make test-reliability`, not `make test`.
pytestmark = [
    pytest.mark.reliability,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

MIB = 1024


def _pid(proc: ServiceProcess) -> int:
    assert proc.pid is not None, f"{proc.name} is not running"
    return proc.pid


def _growth(name: str, samples: list[int], **figures: Any) -> int:
    """RSS growth in KiB from the second sample to the last, reported with the series."""
    growth = samples[-1] - samples[1]
    report(
        f"soak_{name}", rss_mib=[round(s / MIB, 1) for s in samples], growth_kib=growth, **figures
    )
    return growth


async def test_ingestion_memory_is_flat_past_its_dedup_window(
    start_service: StartService, kafka_settings: KafkaSettings
) -> None:
    window, wave_rows, waves = 20_000, 20_000, 6
    ingestion = start_service(
        "ingestion",
        FLYWHEEL_INGESTION_DEDUP_WINDOW=str(window),
        FLYWHEEL_INGESTION_BATCH_ROWS="5000",
    )
    base = census_events(wave_rows)
    samples = [rss_kib(_pid(ingestion))]
    for wave in range(waves):
        events = [{**e, "event_id": f"{e['event_id']}-w{wave}"} for e in base]
        await publish_events(kafka_settings, events)
        accepted = (wave + 1) * wave_rows
        await asyncio.to_thread(
            wait_for,
            lambda a=accepted: (
                metric(ingestion, "flywheel_ingestion_events_total", outcome="accepted") >= a
            ),
            120,
            f"wave {wave} accepted",
        )
        samples.append(rss_kib(_pid(ingestion)))
    held = metric(ingestion, "flywheel_ingestion_dedup_ids", dataset=CENSUS.name)
    growth = _growth(
        "ingestion",
        samples,
        events=waves * wave_rows,
        dedup_window=window,
        dedup_ids_held=held,
    )
    assert held <= window
    # 80k rows (17 columns) kept past their flush would be far more than this
    assert growth < 40 * MIB


async def test_monitoring_memory_is_flat_past_its_join_window(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str
) -> None:
    contract = load_contract(CONTRACTS / "car_loan.yaml")
    reference, analysis = load_car_loan(DATA)
    manifest = seed_version(ArtifactStore(store_uri), contract, reference.iloc[:10_000], 1)
    max_pending, wave_rows, waves = 2_000, 6_000, 6
    monitoring = start_service(
        "monitoring",
        FLYWHEEL_MONITORING_JOIN_MAX_PENDING=str(max_pending),
        FLYWHEEL_MONITORING_LOG_FLUSH_S="1",
        FLYWHEEL_MONITORING_POLL_TIMEOUT_MS="200",
    )
    rows: pd.DataFrame = analysis.iloc[:wave_rows]
    base = list(prediction_events(contract, rows, manifest))
    truth = dict(zip(rows["id"].astype(str), rows["repaid"], strict=True))
    samples = [rss_kib(_pid(monitoring))]
    producer = AIOKafkaProducer(**client_kwargs(kafka_settings, "test-soak"), linger_ms=20)

    def accounted() -> float:
        # every feedback record is joined, held for its prediction (bounded), or counted
        # late once pushed out of that hold (its prediction was evicted before it came)
        return metric(monitoring, "flywheel_monitoring_early_feedback") + sum(
            metric(monitoring, "flywheel_monitoring_labels_total", outcome=o)
            for o in ("joined", "late")
        )

    await producer.start()
    try:
        sent = 0
        for wave in range(waves):
            preds = [p.model_copy(update={"id": f"{p.id}-w{wave}"}) for p in base]
            # chunks of 500 predictions, then labels for half of them: the other half waits
            # in the join until the bound evicts it
            for start in range(0, len(preds), 500):
                chunk = preds[start : start + 500]
                for p in chunk:
                    value = p.model_dump_json().encode()
                    await producer.send(topics.PREDICTIONS, value, key=b"car_loan")
                await producer.flush()
                for p in chunk[::2]:
                    fb = Feedback(prediction_id=p.id, label=int(truth[p.request_id]))
                    await producer.send(
                        topics.FEEDBACK, fb.model_dump_json().encode(), key=b"car_loan"
                    )
                    sent += 1
                await producer.flush()
            await asyncio.to_thread(
                wait_for, lambda s=sent: accounted() >= s, 120, f"wave {wave}'s feedback"
            )
            samples.append(rss_kib(_pid(monitoring)))
    finally:
        await producer.stop()
    joined = metric(monitoring, "flywheel_monitoring_labels_total", outcome="joined")
    pending = metric(monitoring, "flywheel_monitoring_pending_predictions")
    early = metric(monitoring, "flywheel_monitoring_early_feedback")
    growth = _growth(
        "monitoring",
        samples,
        predictions=waves * wave_rows,
        labels=sent,
        joined=joined,
        max_pending=max_pending,
        pending_held=pending,
        early_feedback_held=early,
    )
    assert pending <= max_pending
    assert early <= max_pending
    assert joined > 0
    assert growth < 40 * MIB


async def test_serving_memory_is_flat_under_sustained_load(
    start_service: StartService, store_uri: str
) -> None:
    need_data("employment_MA_reference.pq")
    _, onnx = fit_model(CENSUS, census_rows(DATA, 400))
    register_model(Registry(ArtifactStore(store_uri)), CENSUS, onnx, dataset_version="dv1")
    serving = start_service("serving", FLYWHEEL_SERVING_EVENT_BUFFER_ROWS="20000")
    x = feature_matrix(CENSUS, census_rows(DATA, 16, offset=5000)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    samples = [rss_kib(_pid(serving))]
    steps, per_step = 6, 2_000
    with Load(serving.ready_info["grpc_address"], [inp], threads=4) as load:
        for step in range(steps):
            target = (step + 1) * per_step
            await asyncio.to_thread(
                wait_for, lambda t=target: load.count() >= t, 180, f"{target} requests"
            )
            samples.append(rss_kib(_pid(serving)))
    rows = load.count() * len(x)
    growth = _growth("serving", samples, requests=load.count(), rows=rows, failed=len(load.errors))
    assert load.errors == []
    assert growth < 40 * MIB
