"""The Kafka adapters: one consumer feeding the core, one producer for its actions.

Offsets are committed only once the consumed records' effect is durable: the
prediction log is flushed to the store first (the core's in-memory windows are
rebuilt from traffic after a restart; the log is the audit trail).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from pydantic import BaseModel, ValidationError

from shared import topics
from shared.events import (
    BatchQuarantined,
    DatasetValidated,
    DeadLetter,
    Deployment,
    Feedback,
    ModelRegistered,
    Prediction,
)
from shared.kafka import (
    EventPublisher,
    TopicWatch,
    consumer_kwargs,
    ensure_topics,
)
from shared.settings import KafkaSettings

from .core import MonitoringCore, Outgoing
from .metrics import MonitoringMetrics

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[Any]"]

CONSUMED: dict[str, type[BaseModel]] = {
    topics.PREDICTIONS: Prediction,
    topics.FEEDBACK: Feedback,
    topics.DATA_VALIDATED: DatasetValidated,
    topics.MODELS_REGISTERED: ModelRegistered,
    topics.MODELS_DEPLOYMENTS: Deployment,
    topics.DATA_EVENTS_DLQ: DeadLetter,
    topics.DATA_QUARANTINED: BatchQuarantined,
}


class MonitoringConsumer:
    """Consumes monitoring's topics in batches and hands them to the core.

    Args:
        settings: Kafka settings.
        group_id: the consumer group.
        core: the transport-free core.
        publisher: where the core's actions go.
        metrics: the service's metrics.
        log: the service logger.
        spawn: runs the loop as a supervised task (a crash stops the service).
        poll_timeout_ms: how long one poll waits.
        topic_check_s: while idle, how often missing topics are recreated (a restarted
            embedded broker has lost them, and clients do not report that as an error).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        core: MonitoringCore,
        publisher: EventPublisher,
        metrics: MonitoringMetrics,
        log: Any,
        spawn: Spawn,
        poll_timeout_ms: int = 500,
        topic_check_s: float = 10.0,
    ):
        self.settings = settings
        self._topics = TopicWatch(settings, CONSUMED, topic_check_s, log)
        self.spawn = spawn
        self.core = core
        self.publisher = publisher
        self.metrics = metrics
        self.log = log
        self.poll_timeout_ms = poll_timeout_ms
        self._consumer = AIOKafkaConsumer(
            *CONSUMED, **consumer_kwargs(settings, "monitoring-consumer", group_id)
        )
        self._uncommitted: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join the group and start consuming."""
        await self._consumer.start()
        self._task = self.spawn(self._loop(), "monitoring-consumer")

    async def stop(self) -> None:
        """Stop consuming, flush the log, commit, leave the group."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(KafkaError, OSError):
            await self._flush_and_commit()
        await self._consumer.stop()

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=self.poll_timeout_ms)
                if not batch:
                    await self._topics.check()
                for tp, records in batch.items():
                    await self._handle(tp.topic, records)
                    self._uncommitted[tp] = records[-1].offset + 1
                if self.core.predlog.pending == 0 or self.core.predlog.due():
                    await self._flush_and_commit()
                failures = 0
            except KafkaError as err:
                # Broker gone or restarted: recreate the topics (Tansu loses them) and go on.
                failures += 1
                self.log.warning("consumer.error", error=repr(err), failures=failures)
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))  # back-off, not readiness
                await ensure_topics(self.settings, CONSUMED)

    def _decode(self, topic: str, record: ConsumerRecord[bytes, bytes]) -> BaseModel | None:
        model = CONSUMED[topic]
        try:
            return model.model_validate_json(record.value or b"")
        except ValidationError as err:
            self.metrics.rejected.labels(topic, "invalid").inc()
            self.log.warning(
                "record.rejected",
                topic=topic,
                partition=record.partition,
                offset=record.offset,
                error=err.errors(include_url=False)[0]["msg"],
            )
            return None

    async def _handle(self, topic: str, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        decoded = [e for e in (self._decode(topic, r) for r in records) if e is not None]
        out: list[Outgoing] = []
        if topic == topics.PREDICTIONS:
            out = self.core.on_predictions([e for e in decoded if isinstance(e, Prediction)])
        elif topic == topics.FEEDBACK:
            out = self.core.on_feedback([e for e in decoded if isinstance(e, Feedback)])
        else:
            for e in decoded:
                if isinstance(e, Deployment):
                    self.core.on_deployment(e)
                elif isinstance(e, ModelRegistered):
                    self.core.on_registered(e)
                elif isinstance(e, DatasetValidated):
                    self.core.on_validated(e)
                elif isinstance(e, DeadLetter):
                    self.core.on_dead_letter(e)
                elif isinstance(e, BatchQuarantined):
                    self.core.on_quarantined(e)
        for item in out:
            await self.publisher.publish(item.topic, item.key, item.event)

    async def _flush_and_commit(self) -> None:
        if self.core.predlog.pending:
            kinds = self.core.predlog.pending_kinds()
            # Parquet encoding and the store write are blocking: keep the loop responsive.
            uris = await asyncio.to_thread(self.core.predlog.flush)
            for kind, rows in kinds.items():
                self.metrics.log_rows.labels(kind).inc(rows)
            self.log.info("log.flushed", objects=len(uris), **kinds)
        if not self._uncommitted:
            return
        offsets = {tp: OffsetAndMetadata(o, "") for tp, o in self._uncommitted.items()}
        try:
            await self._consumer.commit(offsets)
            self._uncommitted.clear()
        except CommitFailedError as err:
            # The group rebalanced: the new owner resumes from the last commit.
            self.log.warning("commit.failed", error=repr(err))
            self._uncommitted.clear()
