"""The Kafka adapters: a consumer feeding the core, a producer publishing its events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import TopicPartition
from pydantic import BaseModel, ValidationError

from shared import topics
from shared.events import DatasetValidated, DeploymentRequest, RetrainRequest
from shared.kafka import (
    TopicWatch,
    consumer_kwargs,
    ensure_topics,
)
from shared.settings import KafkaSettings
from shared.signing import verify

from .core import Spawn, TrainingCore
from .metrics import TrainingMetrics
from .offsets import OffsetTracker

CONSUMED: dict[str, type[BaseModel]] = {
    topics.DATA_VALIDATED: DatasetValidated,
    topics.RETRAIN_REQUESTS: RetrainRequest,
    topics.DEPLOYMENT_REQUESTS: DeploymentRequest,
}


ALL_TRAINING_TOPICS = (*CONSUMED, topics.MODELS_REGISTERED, topics.MODELS_DEPLOYMENTS)


class TrainingConsumer:
    """Consumes the training topics and hands each record to the core.

    Offsets are committed only once a record's effect is durable: deployments once the
    alias is written, triggers once the run that covered them has finished.

    Args:
        settings: Kafka settings.
        group_id: the consumer group.
        core: the transport-free core.
        metrics: the service's metrics.
        log: the service logger.
        poll_timeout_ms: how long one poll waits.
        spawn: starts the consumer task (``Runtime.spawn`` in the service).
        topic_check_s: how often missing topics are recreated (a restarted embedded
            broker has lost them, and clients do not report that as an error).
        deploy_key: the key deployment requests must be signed with (None: every
            request is refused, as unauthenticated).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        core: TrainingCore,
        metrics: TrainingMetrics,
        log: Any,
        poll_timeout_ms: int = 500,
        spawn: Spawn | None = None,
        topic_check_s: float = 30.0,
        deploy_key: bytes | None = None,
    ):
        self.settings = settings
        self.deploy_key = deploy_key
        self.core = core
        self.metrics = metrics
        self.log = log
        self.poll_timeout_ms = poll_timeout_ms
        self.offsets = OffsetTracker()
        self._topics = TopicWatch(settings, ALL_TRAINING_TOPICS, topic_check_s, log)
        self._consumer = AIOKafkaConsumer(
            *CONSUMED, **consumer_kwargs(settings, "training-consumer", group_id)
        )
        self._task: asyncio.Task[None] | None = None
        self._spawn: Spawn = spawn or (lambda coro, name: asyncio.create_task(coro, name=name))

    async def start(self) -> None:
        """Join the group and start consuming."""
        await self._consumer.start()
        self._task = self._spawn(self._loop(), "training-consumer")

    async def stop(self) -> None:
        """Stop consuming, commit what is durable, leave the group."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(KafkaError):
            await self._commit()
        await self._consumer.stop()

    async def _loop(self) -> None:
        failures = 0
        while True:
            await self._topics.check()
            try:
                batch = await self._consumer.getmany(timeout_ms=self.poll_timeout_ms)
                for tp, records in batch.items():
                    for record in records:
                        self.offsets.track(tp, record.offset)
                        await self._handle(tp, record)
                await self._commit()
                failures = 0
            except KafkaError as err:
                # Broker gone or restarted: recreate the topics (Tansu loses them) and go on.
                failures += 1
                self.log.warning("consumer.error", error=repr(err), failures=failures)
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))  # back-off, not readiness
                await ensure_topics(self.settings, CONSUMED)

    async def _commit(self) -> None:
        offsets = self.offsets.committable()
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as err:
            # The group rebalanced: the new owner resumes from the last commit.
            self.log.warning("commit.failed", error=str(err))
            self.offsets.forget(set(offsets))
            return
        self.offsets.committed(offsets)

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        def ack() -> None:
            self.offsets.done(tp, record.offset)

        kind = CONSUMED[record.topic]
        try:
            event = kind.model_validate_json(record.value or b"")
        except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as err:
            self.metrics.events.labels(record.topic, "rejected").inc()
            self.log.error(
                "event.rejected",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=str(err).splitlines()[0],
            )
            ack()
            return
        if isinstance(event, DeploymentRequest):
            if self.deploy_key is None or not verify(event, self.deploy_key):
                outcome = "rejected"
                self.metrics.deployments.labels(event.model, event.action, "unsigned").inc()
                self.log.error(
                    "deployment.refused",
                    reason="signature",
                    model=event.model,
                    action=event.action,
                    actor=event.actor,
                    offset=record.offset,
                )
            else:
                outcome = await self.core.apply_request(event)
            ack()
        elif isinstance(event, DatasetValidated):
            outcome = "accepted" if self.core.submit_validated(event, ack) else "ignored"
        else:
            assert isinstance(event, RetrainRequest)
            outcome = "accepted" if self.core.submit_request(event, ack) else "ignored"
        if outcome == "applied":
            outcome = "accepted"
        elif outcome == "refused":
            outcome = "rejected"
        self.metrics.events.labels(record.topic, outcome).inc()
