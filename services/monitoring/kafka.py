"""The Kafka adapters: the partitioned stream, the control topics, the actions' producer.

:class:`StreamConsumer` consumes the co-partitioned stream - ``predictions`` and
``feedback.routed`` - in the consumer group, with the range assignor so partition ``k``
of both topics goes to the same replica. A checkpoint flushes the prediction log, writes
each changed partition's snapshot (:mod:`.state`: its join entries and window shares,
named by its offsets) and then commits those offsets; newly assigned partitions restore
the snapshots of their committed offsets together, so a restart or a rebalance resumes
the join and the windows as they were at the last checkpoint.

:class:`ControlConsumer` follows the control topics on every replica without a group:
``models.deployments`` from the beginning (every replica must know each champion), the
counted topics (dead letters, quarantines, dataset and model versions) from their end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
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
    decode_predictions,
)
from shared.kafka import EventPublisher, TopicWatch, client_kwargs, consumer_kwargs, ensure_topics
from shared.kafka_protocol import fetch_partitions
from shared.settings import KafkaSettings

from .core import MonitoringCore, Outgoing
from .metrics import MonitoringMetrics
from .state import Partitioner, PartitionSnapshots, Snapshot

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[Any]"]

STREAM = (topics.PREDICTIONS, topics.FEEDBACK_ROUTED)
CONTROL: dict[str, type[BaseModel]] = {
    topics.DATA_VALIDATED: DatasetValidated,
    topics.MODELS_REGISTERED: ModelRegistered,
    topics.MODELS_DEPLOYMENTS: Deployment,
    topics.DATA_EVENTS_DLQ: DeadLetter,
    topics.DATA_QUARANTINED: BatchQuarantined,
}
REPLAYED = (topics.MODELS_DEPLOYMENTS,)
"""Control topics read from the beginning (state); the others from their end (counts)."""


async def _partitions(settings: KafkaSettings, names: Iterable[str]) -> dict[str, list[int]]:
    return await fetch_partitions(
        settings, list(names), timeout_s=settings.request_timeout_ms / 1e3
    )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: StreamConsumer):
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.owner.revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.owner.assigned({tp.partition for tp in assigned})


class StreamConsumer:
    """Consumes predictions and routed feedback, checkpointing the state per partition.

    Args:
        settings: Kafka settings.
        group_id: the consumer group.
        core: the transport-free core (its join is partitioned by :class:`.state.Partitioner`).
        snapshots: where partition snapshots go.
        publisher: where the core's actions go.
        metrics: the service's metrics.
        log: the service logger.
        spawn: runs the loop as a supervised task (a crash stops the service).
        poll_timeout_ms: how long one poll waits.
        topic_check_s: while idle, how often missing topics are recreated.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        core: MonitoringCore,
        snapshots: PartitionSnapshots,
        publisher: EventPublisher,
        metrics: MonitoringMetrics,
        log: Any,
        spawn: Spawn,
        poll_timeout_ms: int = 500,
        topic_check_s: float = 10.0,
    ):
        self.settings = settings
        self.group_id = group_id
        self.core = core
        self.snapshots = snapshots
        self.publisher = publisher
        self.metrics = metrics
        self.log = log
        self.spawn = spawn
        self.poll_timeout_ms = poll_timeout_ms
        self._topics = TopicWatch(settings, (*STREAM, topics.FEEDBACK), topic_check_s, log)
        self._consumer = AIOKafkaConsumer(
            **consumer_kwargs(settings, "monitoring-consumer", group_id),
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        self._lock = asyncio.Lock()
        self._owned: set[int] = set()
        self._next: dict[TopicPartition, int] = {}
        self._dirty: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Check the co-partitioning, join the group and start consuming."""
        parts = await _partitions(self.settings, STREAM)
        counts = {t: len(p) for t, p in parts.items()}
        if len(set(counts.values())) != 1:
            raise RuntimeError(
                f"{' and '.join(STREAM)} must have the same number of partitions "
                f"(co-partitioned join), found {counts}"
            )
        self.core.join.partition_of = Partitioner(counts[topics.PREDICTIONS])
        self._consumer.subscribe(list(STREAM), listener=_Rebalance(self))
        await self._consumer.start()
        self._task = self.spawn(self._loop(), "monitoring-consumer")

    async def stop(self) -> None:
        """Stop consuming, checkpoint, leave the group."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(KafkaError, OSError):
            async with self._lock:
                await self._checkpoint()
        await self._consumer.stop()

    # --- rebalances ----------------------------------------------------------------------

    async def assigned(self, partitions: set[int]) -> None:
        """Restore the snapshots of newly assigned partitions and seek to their offsets."""
        async with self._lock:
            new = sorted(partitions - self._owned)
            tps = [TopicPartition(t, k) for k in new for t in STREAM]
            committed = await self._committed(tps)
            found: list[Snapshot] = []
            for k in new:
                offsets = {
                    t: m.offset
                    for t in STREAM
                    if (m := committed.get(TopicPartition(t, k))) is not None and m.offset >= 0
                }
                if not offsets:
                    continue  # never checkpointed: read from the beginning
                try:
                    snap = self.snapshots.read(k, offsets)
                except (OSError, KeyError, ValueError, TypeError) as err:
                    self.metrics.rejected.labels("monitoring.state", "unreadable").inc()
                    self.log.error("state.unreadable", partition=k, error=repr(err))
                    continue
                if snap is not None:
                    found.append(snap)
                for topic, offset in offsets.items():
                    self._next[TopicPartition(topic, k)] = offset
                self.log.info(
                    "state.restored",
                    partition=k,
                    offsets=offsets,
                    snapshot=snap is not None,
                    format=snap.format if snap else None,
                )
            # Together: the drift shares of one batch are compared with each other.
            self.snapshots.restore(self.core, found)
            self._owned |= set(new)
            self._update_gauges()

    async def revoked(self, partitions: set[int]) -> None:
        """Checkpoint, then forget the partitions another replica takes over."""
        async with self._lock:
            with contextlib.suppress(KafkaError, OSError):
                await self._checkpoint()
            gone = partitions & self._owned
            self.core.drop_partitions(gone)
            self._owned -= gone
            self._dirty -= gone
            for tp in [tp for tp in self._next if tp.partition in gone]:
                del self._next[tp]
            self._update_gauges()

    async def _committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, Any]:
        if not tps:
            return {}
        admin = AIOKafkaAdminClient(**client_kwargs(self.settings, "monitoring-offsets"))
        await admin.start()
        try:
            found: dict[TopicPartition, Any] = await admin.list_consumer_group_offsets(
                self.group_id, partitions=tps
            )
            return found
        finally:
            await admin.close()

    # --- consuming -----------------------------------------------------------------------

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=self.poll_timeout_ms)
                if not batch:
                    await self._topics.check()
                async with self._lock:
                    for tp, records in batch.items():
                        if tp.partition not in self._owned:
                            continue  # fetched before a revocation: the new owner reads it
                        await self._handle(tp.topic, records)
                        self._next[tp] = records[-1].offset + 1
                        self._dirty.add(tp.partition)
                    if self.core.predlog.pending == 0 or self.core.predlog.due():
                        await self._checkpoint()
                failures = 0
            except KafkaError as err:
                # Broker gone or restarted: recreate the topics (Tansu loses them) and go on.
                failures += 1
                self.log.warning("consumer.error", error=repr(err), failures=failures)
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))  # back-off, not readiness
                await ensure_topics(self.settings, STREAM)

    def _reject(self, topic: str, record: ConsumerRecord[bytes, bytes], err: Exception) -> None:
        self.metrics.rejected.labels(topic, "invalid").inc()
        detail = (
            err.errors(include_url=False)[0]["msg"] if isinstance(err, ValidationError) else err
        )
        self.log.warning(
            "record.rejected",
            topic=topic,
            partition=record.partition,
            offset=record.offset,
            error=str(detail),
        )

    async def _handle(self, topic: str, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        out: list[Outgoing] = []
        if topic == topics.PREDICTIONS:
            rows: list[Prediction] = []
            for r in records:
                try:
                    rows.extend(decode_predictions(r.value or b""))
                except ValidationError as err:
                    self._reject(topic, r, err)
            out = self.core.on_predictions(rows)
        else:
            labels: list[Feedback] = []
            for r in records:
                try:
                    labels.append(Feedback.model_validate_json(r.value or b""))
                except ValidationError as err:
                    self._reject(topic, r, err)
            out = self.core.on_feedback(labels)
        for item in out:
            await self.publisher.publish(item.topic, item.key, item.event)

    async def _checkpoint(self) -> None:
        """Flush the log, snapshot the changed partitions, commit with their keys."""
        if self.core.predlog.pending:
            kinds = self.core.predlog.pending_kinds()
            # Parquet encoding and the store write are blocking: keep the loop responsive.
            uris = await asyncio.to_thread(self.core.predlog.flush)
            for kind, rows in kinds.items():
                self.metrics.log_rows.labels(kind).inc(rows)
            self.log.info("log.flushed", objects=len(uris), **kinds)
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for k in sorted(self._dirty & self._owned):
            # A topic of the pair not read yet keeps no offset: it resumes where the
            # group's commit (or the beginning) says.
            positions = {
                t: self._next[TopicPartition(t, k)]
                for t in STREAM
                if TopicPartition(t, k) in self._next
            }
            await asyncio.to_thread(self.snapshots.save, self.core, k, positions)
            for topic, offset in positions.items():
                offsets[TopicPartition(topic, k)] = OffsetAndMetadata(offset, "")
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
            self._dirty.clear()
        except CommitFailedError as err:
            # The group rebalanced: the new owner resumes from the last commit.
            self.log.warning("commit.failed", error=repr(err))
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.pending_labels.set(len(self.core.join))
        self.metrics.early_feedback.set(self.core.join.early)


class ControlConsumer:
    """Follows the control topics on every replica (no group, no commits).

    Args:
        settings: Kafka settings.
        core: the transport-free core.
        metrics: the service's metrics.
        log: the service logger.
        spawn: runs the loop as a supervised task.
        poll_timeout_ms: how long one poll waits.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        core: MonitoringCore,
        metrics: MonitoringMetrics,
        log: Any,
        spawn: Spawn,
        poll_timeout_ms: int = 500,
    ):
        self.settings = settings
        self.core = core
        self.metrics = metrics
        self.log = log
        self.spawn = spawn
        self.poll_timeout_ms = poll_timeout_ms
        self._consumer = AIOKafkaConsumer(**consumer_kwargs(settings, "monitoring-control", None))
        self._task: asyncio.Task[None] | None = None

    async def position(self) -> None:
        """Assign every control partition: deployments from the start, the rest from the end.

        Called before the core reads the registry's aliases, so the replayed deployments
        end in the registry's state and nothing published in between is missed."""
        await self._consumer.start()
        parts = await _partitions(self.settings, CONTROL)
        tps = [TopicPartition(t, p) for t, ps in parts.items() for p in ps]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*[tp for tp in tps if tp.topic in REPLAYED])
        await self._consumer.seek_to_end(*[tp for tp in tps if tp.topic not in REPLAYED])
        for tp in tps:
            await self._consumer.position(tp)  # resolve now: seek_to_* alone is lazy

    async def start(self) -> None:
        """Start following (after :meth:`position`)."""
        self._task = self.spawn(self._loop(), "monitoring-control")

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=self.poll_timeout_ms)
                for tp, records in batch.items():
                    for r in records:
                        self._apply(tp.topic, r)
                failures = 0
            except KafkaError as err:
                failures += 1
                self.log.warning("control.error", error=repr(err), failures=failures)
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))  # back-off, not readiness
                await ensure_topics(self.settings, CONTROL)

    def _apply(self, topic: str, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            e = CONTROL[topic].model_validate_json(record.value or b"")
        except ValidationError as err:
            self.metrics.rejected.labels(topic, "invalid").inc()
            self.log.warning(
                "record.rejected",
                topic=topic,
                partition=record.partition,
                offset=record.offset,
                error=err.errors(include_url=False)[0]["msg"],
            )
            return
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
