"""Monitoring's join survives SIGKILL and splits over replicas (real processes, real broker).

Predictions go out as serving publishes them (one ``PredictionBatch`` per request, keyed
by the request key) and feedback as users write it (``feedback``, keyed by anything), so
the router, the co-partitioned stream, the snapshots and the rebalance listener are all
on the path. Figures go to ``RELIABILITY`` lines.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from services.monitoring.core import Limits, MonitoringCore
from services.monitoring.join import LabelJoin
from services.monitoring.metrics import MonitoringMetrics
from services.monitoring.predlog import PredictionLog, read_log
from services.monitoring.testing import load_car_loan, prediction_events, seed_version
from services.serving.testing import census_rows, feature_matrix, fit_model, register_model
from shared import topics
from shared.contract import load_contract
from shared.datasets import DatasetCatalog
from shared.events import Feedback, PredictionBatch
from shared.kafka import client_kwargs
from shared.logging import get_logger
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, DATA, StartService, need_data
from tests.reliability.helpers import Load, metric, report, wait_for

# Each test runs real services for a minute or two: in `make test-reliability`, not `make test`.
pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

CONTRACT = load_contract(CONTRACTS / "car_loan.yaml")
ROWS_PER_REQUEST = 50
ENV = {
    "FLYWHEEL_MONITORING_LOG_FLUSH_S": "0.5",
    "FLYWHEEL_MONITORING_WINDOW_ROWS": "10000",  # every label in the window: order-free
    "FLYWHEEL_MONITORING_EVAL_EVERY_LABELS": "100",
}


def _requests(store: ArtifactStore, rows: int) -> tuple[list[PredictionBatch], list[Feedback]]:
    """``rows`` car-loan rows as requests of 50 rows, and the true label of each row."""
    need_data("synthetic_car_loan_reference.csv")
    reference, analysis = load_car_loan(DATA)
    manifest = seed_version(store, CONTRACT, reference.iloc[:2000], 1)
    served = list(prediction_events(CONTRACT, analysis.iloc[:rows], manifest))
    truth = analysis[CONTRACT.label.name].iloc[:rows].tolist()
    batches, feedback = [], []
    for start in range(0, rows, ROWS_PER_REQUEST):
        part = served[start : start + ROWS_PER_REQUEST]
        key = f"{start:08x}"
        batch = PredictionBatch(
            id=key,
            model=CONTRACT.name,
            model_version=1,
            data_version=manifest.dataset_version,
            request_id=key,
            latency_ms=1.0,
            rows=len(part),
            inputs={f: [p.inputs[f] for p in part] for f in CONTRACT.feature_names},
            outputs={k: [p.outputs[k] for p in part] for k in ("label", "probabilities")},
        )
        batches.append(batch)
        feedback += [
            Feedback(prediction_id=pid, label=int(label))
            for pid, label in zip(batch.prediction_ids(), truth[start:], strict=False)
        ]
    return batches, feedback


async def _publish(settings: KafkaSettings, topic: str, items: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(**client_kwargs(settings, "reliability"), acks="all")
    await producer.start()
    try:
        for key, value in items:
            await producer.send(topic, value, key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _committed(settings: KafkaSettings, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on ``topic`` (messages fully handled)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings, "reliability-admin"))
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        found = await admin.list_consumer_group_offsets(group, partitions=tps)
        return sum(max(0, m.offset) for m in found.values())
    finally:
        await admin.close()


def _committed_sync(settings: KafkaSettings, topic: str, expected: int) -> bool:
    return asyncio.run(_committed(settings, "flywheel-monitoring", topic)) >= expected


def _baseline(store: ArtifactStore, batches: list[PredictionBatch], fb: list[Feedback]) -> Any:
    """Live metrics of a run without the kill: the same events through one in-process core."""
    registry = CollectorRegistry()
    core = MonitoringCore(
        {CONTRACT.name: CONTRACT},
        Registry(store),
        DatasetCatalog(store),
        MonitoringMetrics(registry),
        LabelJoin(200_000, 3600),
        PredictionLog(ArtifactStore(store.root + "-baseline"), 10**9, 3600),
        get_logger(test="baseline"),
        Limits(eval_every_labels=100, window_rows=10_000),
    )
    core.load_aliases()
    for b in batches:
        core.on_predictions(b.predictions())
    core.on_feedback(fb)
    return {
        name: registry.get_sample_value(
            "flywheel_monitoring_live_metric",
            {"model": CONTRACT.name, "version": "1", "metric": name},
        )
        for name in ("accuracy", "roc_auc", "labelled_rows")
    }


def _live(proc: Any) -> dict[str, float]:
    """Version 1's live metrics from one scrape (so they come from one evaluation)."""
    url = f"http://127.0.0.1:{proc.ready_info['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "flywheel_monitoring_live_metric" and (
                labels.get("model"),
                labels.get("version"),
            ) == (CONTRACT.name, "1"):
                out[labels["metric"]] = float(sample.value)
    return {name: out.get(name, 0.0) for name in ("accuracy", "roc_auc", "labelled_rows")}


def _labels(proc: Any, outcome: str) -> float:
    return metric(proc, "flywheel_monitoring_labels_total", model=CONTRACT.name, outcome=outcome)


async def test_sigkill_in_the_middle_of_feedback_joins_every_label_with_the_same_metrics(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str
) -> None:
    store = ArtifactStore(store_uri)
    batches, feedback = _requests(store, 5000)
    half = len(feedback) // 2
    monitoring = start_service("monitoring", **ENV)
    await _publish(
        kafka_settings,
        topics.PREDICTIONS,
        [(b.id, b.model_dump_json().encode()) for b in batches],
    )
    # Every prediction checkpointed (log flushed, snapshot written, offsets committed).
    await asyncio.to_thread(
        wait_for,
        lambda: _committed_sync(kafka_settings, topics.PREDICTIONS, len(batches)),
        120,
        "the predictions committed",
    )
    pending_before_feedback = metric(monitoring, "flywheel_monitoring_pending_predictions")
    # Users send half the labels, keyed as they like (here: by no rule at all).
    await _publish(
        kafka_settings,
        topics.FEEDBACK,
        [(f"user-{i % 7}", f.model_dump_json().encode()) for i, f in enumerate(feedback[:half])],
    )
    # Killed once some labels are joined and checkpointed (they are in the quality window's
    # snapshots), while the rest of the half may still be in flight (replayed after).
    await asyncio.to_thread(
        wait_for,
        lambda: _committed_sync(kafka_settings, topics.FEEDBACK_ROUTED, half // 2),
        120,
        "a quarter of the labels committed",
    )
    joined_before_kill = _labels(monitoring, "joined")
    monitoring.kill()
    # The other half is sent while monitoring is down.
    await _publish(
        kafka_settings,
        topics.FEEDBACK,
        [
            (f"user-{i % 7}", f.model_dump_json().encode())
            for i, f in enumerate(feedback[half:], start=half)
        ],
    )
    restarted = start_service("monitoring", **ENV)
    # labelled_rows is set after the other live metrics of an evaluation: once a scrape
    # shows every label in the window, the figures beside it are those of the last
    # evaluation, over the restored rows and the ones joined since.
    live = await asyncio.to_thread(
        wait_for,
        lambda: (m := _live(restarted))["labelled_rows"] == len(feedback) and m,
        180,
        "every label in the live window",
    )
    expected = _baseline(store, batches, feedback)
    logged = read_log(store, "predictions", CONTRACT.name)
    joined_after_restart = _labels(restarted, "joined")
    report(
        "monitoring_sigkill_join",
        predictions=len(feedback),
        pending_before_feedback=pending_before_feedback,
        joined_before_kill=joined_before_kill,
        joined_after_restart=joined_after_restart,
        duplicates=metric(restarted, "flywheel_monitoring_labels_total", outcome="duplicate"),
        late=metric(restarted, "flywheel_monitoring_labels_total", outcome="late"),
        live=live,
        without_kill=expected,
        logged_rows=logged.num_rows,
    )
    assert pending_before_feedback == len(feedback)
    assert 0 < joined_before_kill < len(feedback)  # killed in the middle of the feedback
    # The restored window holds what was joined by the last checkpoint; only the rest
    # (and what was joined after it but before the kill, replayed) is joined again.
    assert joined_after_restart < len(feedback)
    assert metric(restarted, "flywheel_monitoring_labels_total", outcome="late") == 0
    assert live == pytest.approx(expected)
    assert sorted(logged["prediction_id"].to_pylist()) == sorted(f.prediction_id for f in feedback)


async def test_two_replicas_join_as_many_labels_as_one(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str
) -> None:
    store = ArtifactStore(store_uri)
    batches, feedback = _requests(store, 3000)
    first = start_service("monitoring", **ENV)
    second = start_service("monitoring", **ENV)
    await _publish(
        kafka_settings,
        topics.PREDICTIONS,
        [(b.id, b.model_dump_json().encode()) for b in batches],
    )
    await _publish(
        kafka_settings,
        topics.FEEDBACK,
        [(f.prediction_id, json.dumps(f.model_dump()).encode()) for f in feedback],
    )
    replicas = (first, second)
    await asyncio.to_thread(
        wait_for,
        lambda: sum(_labels(p, "joined") for p in replicas) >= len(feedback),
        120,
        "every label joined across the replicas",
    )
    joined = [_labels(p, "joined") for p in replicas]
    late = sum(metric(p, "flywheel_monitoring_labels_total", outcome="late") for p in replicas)
    report("monitoring_two_replicas", labels=len(feedback), joined=joined, late=late)
    assert sum(joined) == len(feedback)  # what one replica joins (the SIGKILL test above)
    assert all(j > 0 for j in joined)  # both replicas took a share of the partitions
    assert late == 0


async def test_sixteen_clients_with_events_on_log_every_answered_row_once(
    start_service: StartService, store_uri: str
) -> None:
    need_data("employment_MA_reference.pq")
    census = load_contract(CONTRACTS / "census_employment.yaml")
    store = ArtifactStore(store_uri)
    _, onnx = fit_model(census, census_rows(DATA, 400))
    register_model(Registry(store), census, onnx, dataset_version="dv1")
    monitoring = start_service("monitoring", **ENV)
    # A small buffer, so 16 clients fill it and meet the back-pressure bound.
    serving = start_service("serving", FLYWHEEL_SERVING_EVENT_BUFFER_ROWS="256")
    x = feature_matrix(census, census_rows(DATA, 8, offset=5000)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with Load(serving.ready_info["grpc_address"], [inp], threads=16) as load:
        await asyncio.to_thread(wait_for, lambda: load.count() >= 1500, 120, "1,500 requests")
    answered = [pid for a in load.ok for pid in a.ids]

    def logged() -> Any:
        table = read_log(store, "predictions", census.name)
        return table if table.num_rows >= len(answered) else None

    table = await asyncio.to_thread(wait_for, logged, 120, "every answered row logged")
    ids = table["prediction_id"].to_pylist()
    stored = sum(store.get_parquet(k).num_rows for k in store.list(f"predictions/{census.name}"))
    dropped = metric(serving, "flywheel_serving_prediction_events_dropped_total")
    waits = metric(serving, "flywheel_serving_prediction_event_wait_seconds_count")
    waited = metric(serving, "flywheel_serving_prediction_event_wait_seconds_sum")
    report(
        "monitoring_sixteen_clients",
        requests=len(load.ok),
        errors=len(load.errors),
        answered_rows=len(answered),
        logged_rows=len(ids),
        stored_rows=stored,
        dropped=dropped,
        requests_that_waited=waits,
        mean_wait_ms=round(1000 * waited / waits, 2) if waits else 0.0,
        monitoring_predictions=metric(monitoring, "flywheel_monitoring_predictions_total"),
    )
    assert load.errors == []
    assert dropped == 0
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(answered)  # every answered row, exactly once
