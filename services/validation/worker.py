"""The Kafka adapter of validation: consume ``data.batches``, publish the verdicts.

Batches are few and heavy, so each is handled off the event loop (heartbeats keep
flowing) and its offset is committed only after the outcome event is acknowledged:
the dataset version and report are durable before that, and a replay is answered
from the stored outcome.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from shared import topics
from shared.events import BatchCreated, DatasetValidated
from shared.kafka import EventPublisher, TopicWatch, consumer_kwargs, ensure_topics
from shared.service import Runtime

from .core import Outcome, Validator
from .settings import ValidationSettings

TOPICS = (topics.DATA_BATCHES, topics.DATA_VALIDATED, topics.DATA_QUARANTINED)


class ValidationWorker:
    """Consumes batch events and publishes ``data.validated`` / ``data.quarantined``.

    Args:
        settings: the service settings.
        validator: the transport-free core.
        runtime: the service runtime.
    """

    def __init__(self, settings: ValidationSettings, validator: Validator, runtime: Runtime):
        self.settings = settings
        self.validator = validator
        self.runtime = runtime
        self.log = runtime.log
        self._consumer: AIOKafkaConsumer | None = None
        self._publisher: EventPublisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._topics = TopicWatch(settings.kafka, TOPICS, settings.topic_check_s, self.log)

    async def start(self) -> None:
        """Create topics, connect, restore gauges and start consuming."""
        kafka = self.settings.kafka
        await ensure_topics(kafka, TOPICS)
        await asyncio.to_thread(self.validator.restore)
        self._publisher = EventPublisher(kafka, "validation-producer", self.log)
        await self._publisher.start()
        self._consumer = AIOKafkaConsumer(
            topics.DATA_BATCHES,
            **consumer_kwargs(kafka, "validation-consumer", self.settings.group_id),
            max_poll_records=50,
        )
        await self._consumer.start()
        self._task = self.runtime.spawn(self._run(), "validation-loop")

    async def stop(self) -> None:
        """Stop consuming and disconnect (uncommitted batches are re-read next time)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        if self._publisher is not None:
            await self._publisher.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            try:
                fetched = await consumer.getmany(timeout_ms=500)
            except KafkaError as err:
                self.log.warning("validation.fetch_failed", error=repr(err))
                await ensure_topics(self.settings.kafka, TOPICS)
                continue
            if not fetched:
                await self._topics.check()
            for tp, records in fetched.items():
                for record in records:
                    await self._handle(record.value)
                    try:
                        await consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "")})
                    except KafkaError as err:
                        # The group moved on (a rebalance, a broker restart): a replayed
                        # batch is recognised by its id and gets its stored outcome again.
                        self.log.warning("validation.commit_failed", error=repr(err))

    async def _handle(self, value: bytes | None) -> None:
        try:
            batch = BatchCreated.model_validate_json(value or b"")
        except ValidationError as err:
            self.validator.metrics.invalid.labels("_unknown", "bad_event").inc()
            self.log.error("validation.bad_event", error=str(err), payload=(value or b"")[:500])
            return
        event = await asyncio.to_thread(self.validator.handle, batch)
        if event is None:
            self.log.warning(
                "validation.missing_batch",
                dataset=batch.dataset,
                batch_id=batch.batch_id,
                uri=batch.uri,
            )
            return
        await self._publish(event)
        self.log.info(
            "validation.verdict",
            dataset=batch.dataset,
            batch_id=batch.batch_id,
            verdict="accept" if isinstance(event, DatasetValidated) else "quarantine",
            rows=event.rows if isinstance(event, DatasetValidated) else None,
            failed_rules=None if isinstance(event, DatasetValidated) else event.failed_rules,
        )

    async def _publish(self, event: Outcome) -> None:
        assert self._publisher is not None
        topic = (
            topics.DATA_VALIDATED
            if isinstance(event, DatasetValidated)
            else topics.DATA_QUARANTINED
        )
        await self._publisher.publish(topic, event.dataset, event)


__all__ = ["TOPICS", "ValidationWorker"]
