"""FastStream and aiokafka against the embedded broker process over real TCP."""

from __future__ import annotations

import asyncio

import pytest
from faststream.kafka.annotations import KafkaMessage

from shared import topics
from shared.events import DataEvent, RetrainRequest
from shared.kafka import describe_topics, ensure_topics, headers, make_broker
from shared.settings import KafkaSettings

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
