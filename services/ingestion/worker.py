"""The Kafka adapter of ingestion: an aiokafka ``getmany`` loop around :class:`Ingestor`.

aiokafka is used directly because the hot loop must run at broker speed (FastStream's
batch subscriber tops out at about a third of the raw ``getmany`` rate here). Offsets
are committed only after every dead letter and every ``data.batches`` event of the
processed records is acknowledged, and those batch events are published only after
their Parquet objects are durably stored: a crash anywhere re-reads the uncommitted
records, and the dedup index (rebuilt from the store) turns them into duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from shared import topics
from shared.events import BatchCreated, DeadLetter, new_id
from shared.kafka import TopicWatch, consumer_kwargs, ensure_topics, headers, producer_kwargs
from shared.service import Runtime

from .core import Ingestor
from .settings import IngestionSettings

TOPICS = (topics.DATA_EVENTS, topics.DATA_EVENTS_DLQ, topics.DATA_BATCHES)


@dataclass
class _Outgoing:
    """One record to publish, kept until acknowledged so a failed send can be repeated."""

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    delivery: asyncio.Future[Any] | None = None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: IngestionWorker):
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.worker.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.worker.on_assigned(list(assigned))


class IngestionWorker:
    """Consumes ``data.events``, publishes dead letters and batch events, commits offsets.

    Args:
        settings: the service settings.
        ingestor: the transport-free core.
        runtime: the service runtime (logger, task supervision).
    """

    def __init__(self, settings: IngestionSettings, ingestor: Ingestor, runtime: Runtime):
        self.settings = settings
        self.ingestor = ingestor
        self.runtime = runtime
        self.log = runtime.log
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._pending: list[_Outgoing] = []
        self._positions: dict[TopicPartition, int] = {}
        self._inflight: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._topics = TopicWatch(settings.kafka, TOPICS, settings.topic_check_s, self.log)

    async def start(self) -> None:
        """Create topics, connect, and start the consume loop."""
        kafka = self.settings.kafka
        await ensure_topics(kafka, TOPICS)
        self._producer = AIOKafkaProducer(
            **await producer_kwargs(kafka, "ingestion-producer"), linger_ms=5
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            **consumer_kwargs(kafka, "ingestion-consumer", self.settings.group_id),
            max_poll_records=self.settings.max_poll_records,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        self._consumer.subscribe([topics.DATA_EVENTS], listener=_Rebalance(self))
        await self._consumer.start()
        self._task = self.runtime.spawn(self._run(), "ingestion-loop")

    async def stop(self) -> None:
        """Stop consuming, flush what is buffered, commit, disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            if self._consumer is not None and self._producer is not None:
                async with self._lock:
                    await self._flush_and_commit()
        finally:
            if self._consumer is not None:
                await self._consumer.stop()
            if self._producer is not None:
                await self._producer.stop()

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        timeout_ms = self.settings.poll_timeout_ms
        while True:
            try:
                fetched = await consumer.getmany(
                    timeout_ms=timeout_ms, max_records=self.settings.max_poll_records
                )
            except KafkaError as err:
                # Tansu loses its topics on a restart: recreate them and keep going.
                self.log.warning("ingestion.fetch_failed", error=repr(err))
                await ensure_topics(self.settings.kafka, TOPICS)
                continue
            if not fetched:
                await self._topics.check()
            async with self._lock:
                for tp, records in fetched.items():
                    if not records:
                        continue
                    letters = self.ingestor.process(records)
                    self._send_letters(letters)
                    self._positions[tp] = records[-1].offset + 1
                if self.ingestor.due() or (self._positions and not self.ingestor.buffered_rows):
                    await self._start_flush()

    def _send(self, records: list[_Outgoing]) -> list[_Outgoing]:
        """Start sending ``records`` (delivery reports in their ``delivery``)."""
        assert self._producer is not None
        for r in records:
            send = self._producer.send(r.topic, r.value, key=r.key, headers=r.headers)
            r.delivery = asyncio.ensure_future(_delivered(send))
        return records

    def _send_letters(self, letters: list[DeadLetter]) -> None:
        self._pending += self._send(
            [
                _Outgoing(
                    topics.DATA_EVENTS_DLQ,
                    letter.model_dump_json().encode(),
                    letter.dataset.encode() if letter.dataset else None,
                    _kafka_headers(letter.id),
                )
                for letter in letters
            ]
        )

    def _publish(self, batches: list[BatchCreated]) -> list[_Outgoing]:
        return self._send(
            [
                _Outgoing(
                    topics.DATA_BATCHES,
                    batch.model_dump_json().encode(),
                    batch.dataset.encode(),
                    _kafka_headers(batch.id),
                )
                for batch in batches
            ]
        )

    async def _deliver(self, records: list[_Outgoing]) -> None:
        """Wait until every record is acknowledged, sending the failed ones again.

        A broker that restarted (or a leader that moved) fails sends for a while: the
        topics are recreated and the failed records re-sent with back-off, for up to
        ``publish_retry_s``; then the error propagates and the service stops without
        committing (a restart re-reads the records; consumers deduplicate).
        """
        deadline = time.monotonic() + self.settings.publish_retry_s
        delay = 0.25
        while records:
            deliveries = [r.delivery for r in records if r.delivery is not None]
            results = await asyncio.gather(*deliveries, return_exceptions=True)
            failed = [
                r for r, res in zip(records, results, strict=True) if isinstance(res, BaseException)
            ]
            if not failed:
                return
            error = next(res for res in results if isinstance(res, BaseException))
            if not isinstance(error, KafkaError) or time.monotonic() + delay > deadline:
                raise error
            self.log.warning("ingestion.publish_retry", records=len(failed), error=repr(error))
            await asyncio.sleep(delay)  # back-off before a retry, not a readiness wait
            delay = min(delay * 2, 5.0)
            with contextlib.suppress(ConnectionError):
                await ensure_topics(self.settings.kafka, TOPICS, attempts=1)
            records = self._send(failed)

    async def _start_flush(self) -> None:
        """Hand what is buffered to a background flush; at most one runs at a time.

        The loop keeps fetching and processing into fresh buffers while the previous
        flush writes its Parquet objects and waits for acknowledgements; offsets are
        committed in order because the next flush starts only after this one finished.
        """
        await self._drain()
        tables = self.ingestor.detach()
        positions, self._positions = self._positions, {}
        pending, self._pending = self._pending, []
        self._inflight = self.runtime.spawn(
            self._complete(tables, positions, pending), "ingestion-flush"
        )

    async def _drain(self) -> None:
        """Wait for the running flush, if any (its failure propagates)."""
        inflight = self._inflight
        if inflight is not None:
            # Shielded: stopping the loop must not cancel a flush half-way; stop() drains it.
            await asyncio.shield(inflight)
            self._inflight = None

    async def _flush_and_commit(self) -> None:
        """Flush everything buffered and wait until it is committed."""
        await self._start_flush()
        await self._drain()

    async def _complete(
        self,
        tables: dict[str, Any],
        positions: dict[TopicPartition, int],
        pending: list[_Outgoing],
    ) -> None:
        """Write, publish, wait for every acknowledgement, then commit ``positions``."""
        assert self._consumer is not None
        with self.ingestor.metrics.flush_seconds.time():
            batches = await asyncio.to_thread(self.ingestor.write, tables)
            # raises if a send cannot be delivered: then nothing is committed.
            await self._deliver(pending + self._publish(batches))
        for batch in batches:
            self.log.info(
                "ingestion.batch", dataset=batch.dataset, rows=batch.rows, batch_id=batch.batch_id
            )
        if positions:
            offsets = {tp: OffsetAndMetadata(pos, "") for tp, pos in positions.items()}
            try:
                await self._consumer.commit(offsets)
            except KafkaError as err:
                # The group moved on (a rebalance, a broker restart): whoever reads these
                # records again finds their ids in the dedup window, so nothing doubles.
                self.log.warning("ingestion.commit_failed", error=repr(err))

    # --- rebalancing ---------------------------------------------------------------------

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Flush and commit before partitions move to another replica."""
        if not revoked:
            return
        async with self._lock:
            await self._flush_and_commit()

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Reload the dedup windows (another replica may have flushed batches) and
        re-announce the newest batch per dataset in case its event was never acknowledged."""
        async with self._lock:
            await self._drain()
            newest = await asyncio.to_thread(self.ingestor.reload)
            await self._deliver(self._publish(newest))
        self.log.info(
            "ingestion.assigned",
            partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned),
            republished=[b.batch_id for b in newest],
        )


async def _delivered(send: Any) -> Any:
    """Await a producer ``send`` and then its delivery report."""
    return await (await send)


def _kafka_headers(event_id: str) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in headers(event_id or new_id()).items()]
