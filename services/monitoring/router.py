"""Re-keys user feedback onto its prediction's partition.

Users write ``{"prediction_id": ..., "label": ...}`` to ``feedback`` with any key (or
none). The router, in its own consumer group, forwards each valid record unchanged to
``feedback.routed`` keyed by the prediction id's routing key
(:func:`shared.events.routing_key`, the key serving published the prediction under), so
Kafka's default partitioner puts a label on the same partition number as its prediction.
Offsets are committed only after the forwarded records are acknowledged (``acks=all``):
a crash may forward a record twice, never lose it (the join remembers the ids it joined
lately, in its snapshots too, and counts a second copy as ``duplicate``, not late).
Invalid records are counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError
from pydantic import ValidationError

from shared import topics
from shared.events import Feedback, routing_key
from shared.kafka import consumer_kwargs, ensure_topics, producer_kwargs
from shared.settings import KafkaSettings

from .metrics import MonitoringMetrics

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[Any]"]
TOPICS = (topics.FEEDBACK, topics.FEEDBACK_ROUTED)


class FeedbackRouter:
    """Consumes ``feedback`` and republishes it on ``feedback.routed`` by routing key.

    Args:
        settings: Kafka settings.
        group_id: the router's consumer group.
        metrics: the service's metrics (invalid records).
        log: the service logger.
        spawn: runs the loop as a supervised task.
        poll_timeout_ms: how long one poll waits.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        metrics: MonitoringMetrics,
        log: Any,
        spawn: Spawn,
        poll_timeout_ms: int = 500,
    ):
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.spawn = spawn
        self.poll_timeout_ms = poll_timeout_ms
        self._consumer = AIOKafkaConsumer(
            topics.FEEDBACK, **consumer_kwargs(settings, "monitoring-router", group_id)
        )
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect (``acks=all``, idempotent where the broker grants it), start forwarding."""
        self._producer = AIOKafkaProducer(
            **await producer_kwargs(self.settings, "monitoring-router-producer")
        )
        await self._producer.start()
        await self._consumer.start()
        self._task = self.spawn(self._loop(), "monitoring-router")

    async def stop(self) -> None:
        """Stop forwarding and disconnect (uncommitted records are forwarded again)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    def route(self, value: bytes | None) -> bytes | None:
        """The key a feedback record is forwarded under, or None (invalid: counted)."""
        try:
            fb = Feedback.model_validate_json(value or b"")
        except ValidationError as err:
            self.metrics.rejected.labels(topics.FEEDBACK, "invalid").inc()
            self.log.warning("feedback.rejected", error=err.errors(include_url=False)[0]["msg"])
            return None
        return routing_key(fb.prediction_id).encode()

    async def _loop(self) -> None:
        failures = 0
        while True:
            batch: dict[Any, list[Any]] = {}
            try:
                batch = await self._consumer.getmany(timeout_ms=self.poll_timeout_ms)
                assert self._producer is not None  # started before the loop
                futures = []
                for records in batch.values():
                    for r in records:
                        key = self.route(r.value)
                        if key is not None:
                            futures.append(
                                await self._producer.send(
                                    topics.FEEDBACK_ROUTED,
                                    r.value,
                                    key=key,
                                    headers=list(r.headers),
                                )
                            )
                await asyncio.gather(*futures)
                if batch:
                    try:
                        await self._consumer.commit(
                            {tp: records[-1].offset + 1 for tp, records in batch.items()}
                        )
                    except CommitFailedError as err:
                        self.log.warning("router.commit_failed", error=repr(err))
                failures = 0
            except KafkaError as err:
                failures += 1
                self.log.warning("router.error", error=repr(err), failures=failures)
                for tp, records in batch.items():
                    # Not acknowledged or not committed: forward this batch again.
                    with contextlib.suppress(KafkaError, AssertionError):
                        self._consumer.seek(tp, records[0].offset)
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))  # back-off, not readiness
                with contextlib.suppress(ConnectionError):
                    await ensure_topics(self.settings, TOPICS, attempts=1)
