"""FastStream and aiokafka against the embedded broker process over real TCP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
import structlog
from aiokafka import AIOKafkaConsumer
from faststream.kafka.annotations import KafkaMessage

from services.serving.kafka import DeploymentWatcher
from shared import topics
from shared.cli.data import read_dlq
from shared.events import DataEvent, DeadLetter, Deployment, RetrainRequest
from shared.kafka import (
    EventPublisher,
    client_kwargs,
    describe_topics,
    ensure_topics,
    headers,
    make_broker,
)
from shared.kafka_protocol import TopicsUnavailable, fetch_partitions
from shared.settings import KafkaSettings
from tests.kafka_answers import KafkaAnswers

pytestmark = pytest.mark.integration


async def test_ensure_topics_is_idempotent(kafka_settings: KafkaSettings) -> None:
    created = await ensure_topics(kafka_settings, topics.ALL_TOPICS)
    assert set(created) == set(topics.ALL_TOPICS)
    assert await ensure_topics(kafka_settings, topics.ALL_TOPICS) == []
    parts = await describe_topics(kafka_settings)
    assert {t: parts[t] for t in topics.ALL_TOPICS} == dict.fromkeys(topics.ALL_TOPICS, 3)


async def test_faststream_roundtrip_with_models_and_headers(kafka_settings: KafkaSettings) -> None:
    await ensure_topics(kafka_settings, [topics.DATA_EVENTS, topics.RETRAIN_REQUESTS])
    broker = make_broker(kafka_settings, "test")
    got: asyncio.Queue[tuple[object, dict[str, str]]] = asyncio.Queue()

    @broker.subscriber(
        topics.RETRAIN_REQUESTS,
        group_id="flywheel-test",
        auto_offset_reset="earliest",
        session_timeout_ms=kafka_settings.session_timeout_ms,
        heartbeat_interval_ms=kafka_settings.heartbeat_interval_ms,
    )
    async def on_request(body: RetrainRequest, msg: KafkaMessage) -> None:
        await got.put((body, dict(msg.headers)))

    await broker.start()
    try:
        sent = RetrainRequest(model="census_employment", reason="test", evidence={"psi": 0.4})
        await broker.publish(
            sent, topics.RETRAIN_REQUESTS, key=b"census_employment", headers=headers("t-1")
        )
        body, hdrs = await asyncio.wait_for(got.get(), timeout=30)
        assert body == sent
        assert hdrs["trace-id"] == "t-1"
        assert hdrs["schema-version"] == "1"
        # the user wire format goes through as plain JSON too
        event = DataEvent(dataset="toy", event_id="1", features={"x": 1.0}, label=1)
        await broker.publish(event.model_dump(), topics.DATA_EVENTS)
    finally:
        await broker.stop()


async def test_unreachable_broker_gives_clear_error() -> None:
    dead = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    with pytest.raises(ConnectionError, match=r"cannot reach Kafka at 127\.0\.0\.1:1"):
        await ensure_topics(dead, ["x"], attempts=2, retry_delay_s=0.01)


# --- Apache Kafka's answers (tests/kafka_answers.py in front of the embedded broker) ------


@pytest.fixture
def kafka_answers(broker: str) -> Iterator[tuple[KafkaAnswers, KafkaSettings]]:
    """The test broker behind a proxy answering Metadata requests as Apache Kafka does."""
    proxy = KafkaAnswers(broker)
    with proxy.running() as address:
        yield (
            proxy,
            KafkaSettings(
                bootstrap_servers=address, session_timeout_ms=3000, heartbeat_interval_ms=500
            ),
        )


async def test_under_kafka_answers_a_consumer_knows_no_topic_until_it_asks(
    kafka_settings: KafkaSettings, kafka_answers: tuple[KafkaAnswers, KafkaSettings]
) -> None:
    proxy, kafka = kafka_answers
    await ensure_topics(kafka_settings, [topics.MODELS_DEPLOYMENTS])
    consumer = AIOKafkaConsumer(**client_kwargs(kafka, "probe"))
    await consumer.start()
    try:
        assert topics.MODELS_DEPLOYMENTS in await consumer.topics()
        # What serving relied on: after topics() the consumer's own view is still empty.
        assert consumer.partitions_for_topic(topics.MODELS_DEPLOYMENTS) is None
    finally:
        await consumer.stop()
    assert proxy.empty_requests >= 1


async def test_under_kafka_answers_serving_positions_and_applies_deployments(
    kafka_settings: KafkaSettings, kafka_answers: tuple[KafkaAnswers, KafkaSettings]
) -> None:
    _proxy, kafka = kafka_answers
    await ensure_topics(kafka_settings, [topics.MODELS_DEPLOYMENTS, topics.PREDICTIONS])
    applied: asyncio.Queue[Deployment] = asyncio.Queue()
    watcher = DeploymentWatcher(kafka, applied.put, lambda: None, structlog.get_logger())
    await watcher.position()
    assert sorted(tp.partition for tp in watcher.partitions) == [0, 1, 2]
    runner = asyncio.create_task(watcher.run())
    publisher = EventPublisher(kafka, "test", structlog.get_logger())
    await publisher.start()
    try:
        event = Deployment(model="m", action="promote", version=1, reason="test")
        await publisher.publish(topics.MODELS_DEPLOYMENTS, "m", event)
        got = await asyncio.wait_for(applied.get(), 30)
        assert got.id == event.id
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await publisher.stop()
        await watcher.stop()


async def test_under_kafka_answers_the_dlq_reader_finds_its_partitions(
    kafka_settings: KafkaSettings, kafka_answers: tuple[KafkaAnswers, KafkaSettings]
) -> None:
    _proxy, kafka = kafka_answers
    await ensure_topics(kafka_settings, [topics.DATA_EVENTS_DLQ])
    letter = DeadLetter(
        source_topic=topics.DATA_EVENTS, partition=0, offset=7, error="x: bad", payload="{}"
    )
    publisher = EventPublisher(kafka_settings, "test", structlog.get_logger())
    await publisher.start()
    try:
        await publisher.publish(topics.DATA_EVENTS_DLQ, "d", letter)
    finally:
        await publisher.stop()
    assert [d.id for d in await read_dlq(kafka, 10)] == [letter.id]


async def test_under_kafka_answers_metadata_requests_create_no_topic(
    kafka_settings: KafkaSettings, kafka_answers: tuple[KafkaAnswers, KafkaSettings]
) -> None:
    _proxy, kafka = kafka_answers
    with pytest.raises(TopicsUnavailable, match=r"not\.created"):
        await fetch_partitions(kafka, ["not.created"], timeout_s=0.5)
    assert "not.created" not in await describe_topics(kafka_settings)
