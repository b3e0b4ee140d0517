"""Kafka adapters: the prediction-event producer and the deployment watcher.

The watcher consumes ``models.deployments`` *without* a consumer group (every serving
replica must see every event) from all partitions. :meth:`DeploymentWatcher.position`
fixes the end offsets before the registry is read at start-up, so no deployment
published in between is missed; :meth:`DeploymentWatcher.run` then applies events from
there in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from shared import topics
from shared.events import Deployment
from shared.kafka import consumer_kwargs, ensure_topics, headers, producer_kwargs
from shared.kafka_protocol import fetch_partitions
from shared.settings import KafkaSettings
from shared.topics import HEADER_TRACE_ID

from .events import Message

TOPICS = (topics.MODELS_DEPLOYMENTS, topics.PREDICTIONS)


class PredictionSink:
    """Publishes prediction events on ``predictions`` (keyed by request key), ``acks=all``.

    Args:
        settings: Kafka settings.
    """

    def __init__(self, settings: KafkaSettings):
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None
        self.partitioner = DefaultPartitioner()
        # The standard headers but the trace id are the same on every record: encoded once.
        self._fixed_headers = [
            (k, v.encode()) for k, v in headers("").items() if k != HEADER_TRACE_ID
        ]

    async def start(self) -> None:
        """Connect: ``acks=all`` (the audit trail: an event counts once replicated),
        idempotent where the broker grants it."""
        self.producer = AIOKafkaProducer(
            **await producer_kwargs(self.settings, "serving-predictions"),
            max_batch_size=1024 * 1024,
        )
        await self.producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self.producer is not None:
            await self.producer.stop()

    async def partitions(self) -> Callable[[bytes], int]:
        """The key -> partition map of ``predictions`` now: Kafka's default (murmur2)
        partitioner over the topic's partitions, as ``send`` would choose (and as
        monitoring's router re-keys feedback)."""
        if self.producer is None:
            raise RuntimeError("PredictionSink.partitions before start")
        partitions = sorted(await self.producer.partitions_for(topics.PREDICTIONS))

        def partition_of(key: bytes) -> int:
            return int(self.partitioner(key, partitions, partitions))

        return partition_of

    async def send(self, messages: list[Message]) -> None:
        """Send every record to its partition, then wait for all acknowledgements.

        Records are appended to per-partition batches (``create_batch``/``send_batch``)
        rather than sent one by one: one future per batch instead of one per record.
        Each record carries one trace-id header per request it holds, in order.
        """
        try:
            await self._send(messages)
        except KafkaError:
            # Tansu loses its topics when it restarts: recreate them for the next round
            # (this round's events are counted as dropped by the publisher).
            with contextlib.suppress(Exception):
                await ensure_topics(self.settings, TOPICS, attempts=1)
            raise

    async def _send(self, messages: list[Message]) -> None:
        if self.producer is None:
            raise RuntimeError("PredictionSink.send before start")
        topic = topics.PREDICTIONS
        grouped: dict[int, list[Message]] = {}
        for message in messages:
            grouped.setdefault(message.partition, []).append(message)
        futures = []
        for partition, items in grouped.items():
            batch = self.producer.create_batch()
            for message in items:
                record_headers = [
                    *((HEADER_TRACE_ID, trace.encode()) for trace in message.traces),
                    *self._fixed_headers,
                ]
                record = {
                    "key": message.key,
                    "value": message.value,
                    "timestamp": None,
                    "headers": record_headers,
                }
                if batch.append(**record) is None:
                    futures.append(
                        await self.producer.send_batch(batch, topic, partition=partition)
                    )
                    batch = self.producer.create_batch()
                    batch.append(**record)
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)


class DeploymentWatcher:
    """Applies every ``models.deployments`` event, in order, to the repository.

    Args:
        settings: Kafka settings.
        apply: applies one event (the repository's ``apply``).
        invalid: called for each record that is not a valid deployment (metrics).
        log: a structlog logger.
        metadata_timeout_s: how long :meth:`position` waits for the topic's partitions.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        apply: Callable[[Deployment], Awaitable[Any]],
        invalid: Callable[[], None],
        log: Any,
        metadata_timeout_s: float = 30.0,
    ):
        self.settings = settings
        self.metadata_timeout_s = metadata_timeout_s
        self.apply = apply
        self.invalid = invalid
        self.log = log
        self.consumer = AIOKafkaConsumer(**consumer_kwargs(settings, "serving-deployments", None))
        self.partitions: list[TopicPartition] = []

    async def position(self) -> None:
        """Connect, assign every partition and pin the current end offsets.

        The partitions come from an explicit metadata request for the topic, waited on
        for up to ``metadata_timeout_s``: a consumer's own cluster view holds only what
        its bootstrap request returned, and Kafka answers that empty-topic request with
        no topics (:mod:`shared.kafka_protocol`). ``assign`` then makes the consumer
        track the topic's metadata itself (leaders for the offset lookups below).

        Raises:
            TopicsUnavailable: the topic has no led partitions at the deadline.
        """
        await ensure_topics(self.settings, TOPICS)
        await self.consumer.start()
        found = await fetch_partitions(
            self.settings, [topics.MODELS_DEPLOYMENTS], self.metadata_timeout_s
        )
        self.partitions = [
            TopicPartition(topics.MODELS_DEPLOYMENTS, p) for p in found[topics.MODELS_DEPLOYMENTS]
        ]
        self.consumer.assign(self.partitions)
        await self.consumer.seek_to_end(*self.partitions)
        for tp in self.partitions:
            await self.consumer.position(tp)  # resolve now: seek_to_end alone is lazy

    async def run(self) -> None:
        """Apply events until cancelled."""
        async for record in self.consumer:
            try:
                event = Deployment.model_validate_json(record.value)
            except (ValidationError, ValueError, TypeError) as exc:
                self.invalid()
                self.log.warning(
                    "deployment.invalid",
                    partition=record.partition,
                    offset=record.offset,
                    error=str(exc).splitlines()[0],
                )
                continue
            self.log.info(
                "deployment.received",
                model=event.model,
                action=event.action,
                model_version=event.version,
                actor=event.actor,
            )
            await self.apply(event)

    async def stop(self) -> None:
        """Disconnect."""
        try:
            await self.consumer.stop()
        except asyncio.CancelledError:
            # With the broker gone, aiokafka lets its fetcher's cancellation escape stop();
            # only a cancellation of this task itself is passed on.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            self.log.warning("deployments.consumer_stop_interrupted")
