"""Consumer-group lag of Flywheel's groups, per topic, into a gauge.

Committed offsets are fetched for explicit partitions (every partition of every
Flywheel topic): Tansu drops the connection on an OffsetFetch for "all partitions",
and asking for explicit ones is standard Kafka. Partitions a group never committed
(offset -1) are not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from shared import topics
from shared.kafka import client_kwargs
from shared.kafka_protocol import fetch_partitions
from shared.settings import KafkaSettings

from .metrics import MonitoringMetrics

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[Any]"]
GROUP_PREFIX = "flywheel-"


async def group_lag(settings: KafkaSettings) -> dict[str, dict[str, int]]:
    """Flywheel consumer group -> topic -> messages behind (end minus committed)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings, "monitoring-lag-admin"))
    consumer = AIOKafkaConsumer(**client_kwargs(settings, "monitoring-lag"))
    await admin.start()
    await consumer.start()
    try:
        existing = set(await admin.list_topics())
        names = [t for t in topics.ALL_TOPICS if t in existing]
        # Named topics, never auto-created (an admin describe_topics may create them).
        timeout_s = settings.request_timeout_ms / 1000
        found = await fetch_partitions(settings, names, timeout_s) if names else {}
        partitions = [TopicPartition(t, p) for t, parts in found.items() for p in parts]
        ends = await consumer.end_offsets(partitions) if partitions else {}
        lag: dict[str, dict[str, int]] = {}
        for group, _protocol in await admin.list_consumer_groups():
            if not group.startswith(GROUP_PREFIX):
                continue  # bounded labels: other applications' groups are not ours to chart
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            per_topic: dict[str, int] = {}
            for tp, meta in committed.items():
                if meta.offset < 0:
                    continue  # the group does not consume this partition
                behind = max(0, ends.get(tp, 0) - meta.offset)
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + behind
            if per_topic:
                lag[group] = per_topic
        return lag
    finally:
        await consumer.stop()
        await admin.close()


class LagProbe:
    """Measures every Flywheel consumer group's lag periodically.

    Args:
        settings: Kafka settings.
        metrics: the service's metrics.
        log: the service logger.
        spawn: runs the loop as a supervised task.
        interval_s: seconds between measurements.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        metrics: MonitoringMetrics,
        log: Any,
        spawn: Spawn,
        interval_s: float,
    ):
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.spawn = spawn
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start measuring."""
        self._task = self.spawn(self._loop(), "monitoring-lag")

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def measure(self) -> None:
        """One measurement into ``flywheel_monitoring_consumer_lag``."""
        for group, per_topic in (await group_lag(self.settings)).items():
            for topic, behind in per_topic.items():
                self.metrics.consumer_lag.labels(group, topic).set(behind)

    async def _loop(self) -> None:
        while True:
            try:
                await self.measure()
            except (KafkaError, OSError) as err:
                self.log.warning("lag.failed", error=repr(err))
            await asyncio.sleep(self.interval_s)  # the measurement period
