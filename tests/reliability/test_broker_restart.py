"""Stop and restart the embedded broker under running services: they all resume alone.

Tansu 0.6 keeps everything in memory, so the restarted broker is empty: no topics, no
messages, no committed offsets. Each service must notice, recreate its topics
(shared.kafka.ensure_topics), rejoin its consumer group and carry on. What that costs
compared to a replicated Kafka is written down in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.serving.testing import census_rows, feature_matrix, fit_model, register_model
from shared import topics
from shared.cli.data import publish_events
from shared.datasets import DatasetCatalog
from shared.embedded import EmbeddedBroker, free_port
from shared.kafka import client_kwargs
from shared.kafka_protocol import fetch_partitions
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import DATA, StartService, need_data
from tests.deploying import request
from tests.reliability.helpers import (
    CENSUS,
    census_events,
    latest_rows,
    metric,
    report,
    wait_for,
)

# Real services killed and restarted for a minute: in `make test-reliability`, not `make test`.
pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

# every service checks its topics this often while idle (defaults are 10-30 s)
TOPIC_CHECK = {
    "FLYWHEEL_INGESTION_TOPIC_CHECK_S": "1",
    "FLYWHEEL_VALIDATION_TOPIC_CHECK_S": "1",
    "FLYWHEEL_TRAINING_TOPIC_CHECK_S": "1",
    "FLYWHEEL_MONITORING_TOPIC_CHECK_S": "1",
    "KAFKA_REQUEST_TIMEOUT_MS": "5000",
}


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker this test may stop and start again on the same port."""
    b = EmbeddedBroker(free_port(), log=tmp_path / "broker.log")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def broker(own_broker: EmbeddedBroker) -> str:
    """The service fixtures' broker is the restartable one."""
    return own_broker.bootstrap


async def topic_names(settings: KafkaSettings) -> set[str]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings, "reliability-admin"))
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def messages_held(settings: KafkaSettings, topic: str) -> int:
    """How many messages ``topic`` holds (0 when it does not exist)."""
    if topic not in await topic_names(settings):
        return 0
    partitions = await fetch_partitions(settings, [topic], timeout_s=10)
    consumer = AIOKafkaConsumer(**client_kwargs(settings, "reliability-offsets"))
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions[topic]])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def publish(settings: KafkaSettings, topic: str, value: bytes, key: str) -> None:
    producer = AIOKafkaProducer(**client_kwargs(settings, "reliability"), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


async def test_every_service_resumes_after_a_broker_restart(
    own_broker: EmbeddedBroker,
    start_service: StartService,
    kafka_settings: KafkaSettings,
    store_uri: str,
) -> None:
    need_data("employment_MA_reference.pq")
    store = ArtifactStore(store_uri)
    registry = Registry(store)
    _, onnx1 = fit_model(CENSUS, census_rows(DATA, 400))
    _, onnx2 = fit_model(CENSUS, census_rows(DATA, 400, offset=400), c=0.05)
    register_model(registry, CENSUS, onnx1, dataset_version="dv1")
    register_model(registry, CENSUS, onnx2, dataset_version="dv2", alias=None)
    env = {**TOPIC_CHECK, "FLYWHEEL_INGESTION_BATCH_SECONDS": "0.5"}
    procs = {
        name: start_service(name, **env)
        for name in ("ingestion", "validation", "training", "serving", "monitoring")
    }
    catalog = DatasetCatalog(store)
    await publish_events(kafka_settings, census_events(2000))
    await asyncio.to_thread(
        wait_for, lambda: latest_rows(catalog, CENSUS.name) == 2000, 90, "first rows"
    )
    versions_before = len(catalog.ids(CENSUS.name))

    own_broker.stop()
    own_broker.start()
    # It forgot everything: the 2,000 events are gone. (Topic names alone race with the
    # services: a consumer's metadata refresh recreates its topics on this broker at once.)
    assert await messages_held(kafka_settings, topics.DATA_EVENTS) == 0

    # every service's topics come back without anyone restarting a service
    wanted = set(topics.ALL_TOPICS)
    seen: set[str] = set()

    def recreated() -> bool:
        seen.clear()
        seen.update(asyncio.run(topic_names(kafka_settings)))
        return wanted <= seen

    try:
        await asyncio.to_thread(wait_for, recreated, 90, "the services to recreate their topics")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still missing: {sorted(wanted - seen)}") from None
    # new data events become a new dataset version (ingestion + validation resumed)
    await publish_events(kafka_settings, census_events(2000, offset=2000))
    await asyncio.to_thread(
        wait_for, lambda: latest_rows(catalog, CENSUS.name) == 4000, 120, "rows after restart"
    )
    # training consumed the new data.validated (census needs 60000 rows: it skips)
    skipped = "flywheel_training_runs_total"
    await asyncio.to_thread(
        wait_for,
        lambda: metric(procs["training"], skipped, model=CENSUS.name, outcome="skipped") >= 2,
        90,
        "training to see both dataset versions",
    )
    # training's request consumer and serving's deployment consumer rejoined: a promotion
    # requested now is recorded by training and applied by serving
    await publish(
        kafka_settings,
        topics.DEPLOYMENT_REQUESTS,
        request(CENSUS, "promote", 2).model_dump_json().encode(),
        CENSUS.name,
    )
    client = triton.InferenceServerClient(procs["serving"].ready_info["grpc_address"])
    x = feature_matrix(CENSUS, census_rows(DATA, 4, offset=5000)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)

    def served_version() -> str:
        return str(client.infer(CENSUS.name, [inp]).get_response().model_version)

    await asyncio.to_thread(wait_for, lambda: served_version() == "2", 90, "the promotion")
    # serving publishes prediction events again, and monitoring logs them
    ids = [i.decode() for i in client.infer(CENSUS.name, [inp]).as_numpy("prediction_id")]

    def logged() -> set[str]:
        out: set[str] = set()
        for key in store.list(f"predictions/{CENSUS.name}"):
            out |= set(store.get_parquet(key).column("prediction_id").to_pylist())
        return out

    await asyncio.to_thread(wait_for, lambda: set(ids) <= logged(), 120, "the prediction log")
    client.close()
    dead = {n: p for n, p in procs.items() if p.returncode is not None}
    assert not dead, "\n\n".join(
        f"{n} exited {p.returncode}:\n" + "\n".join(list(p.tail)[-15:]) for n, p in dead.items()
    )
    report(
        "broker_restart",
        services=len(procs),
        dataset_versions_before=versions_before,
        dataset_versions_after=len(catalog.ids(CENSUS.name)),
        rows_after=latest_rows(catalog, CENSUS.name),
        topics_recreated=len(wanted),
    )
