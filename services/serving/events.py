"""Prediction events: buffered, serialised and published off the response path.

The data plane hands each answered request to :meth:`PredictionPublisher.submit`, which
appends it to a bounded in-memory buffer (no I/O, no serialisation). A background task
drains the buffer a round at a time: it groups the round's requests by partition and
model (:mod:`.encoding`), runs the shadow model (if any) on each group's rows, encodes
each group as one ``predictions`` message (a :class:`shared.events.PredictionGroup`,
rows column by column, keyed by its first request's key) and sends them, waiting for
``acks=all``.

Nothing is dropped while Kafka is reachable: a failed send is retried with back-off
(the request's rows stay in the buffer), and when the buffer is full a request waits
for room - for at most ``block_s`` - before its response is returned. Only a request
that still finds no room after that bound (Kafka unreachable for longer than the
buffer lasts) has its events dropped, counted and logged. A request whose event is
larger than a Kafka record may be travels in parts (:func:`_encoded`); only a single row
that alone is larger (no record could carry it) is dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from .encoding import MAX_MESSAGE_BYTES, Answered, encode, group


class Message(NamedTuple):
    """One ``predictions`` record."""

    partition: int
    key: bytes
    value: bytes
    traces: tuple[str, ...]
    """The trace id of each request in the message, in order."""


PartitionOf = Callable[[], Awaitable[Callable[[bytes], int]]]
"""Returns the current key -> partition map of ``predictions`` (Kafka's default
partitioner over the topic's partitions)."""
Send = Callable[[list[Message]], Awaitable[None]]
"""Publishes records and returns once Kafka acknowledged them (raises if it did not)."""
YIELD_S = 0.00025
"""Longest stretch of event encoding before the publisher lets waiting responses out.
Yielding after every request instead cost a loop round each (about as much as encoding
a batch-1 event), for responses that wait a quarter of a millisecond at most."""


class PredictionPublisher:
    """The bounded buffer and the task that empties it.

    Args:
        send: publishes a list of records (the Kafka producer adapter).
        partitions: the key -> partition map of ``predictions`` (the adapter's); None:
            one partition (tests).
        buffer_rows: the most rows held (buffered or in flight).
        batch_rows: the most rows serialised and sent per round.
        block_s: the longest a request waits for room in a full buffer; after it its
            events are dropped (counted, logged).
        linger_s: how long a round waits for more rows before sending (fewer, larger
            sends; never on the response path). A round starts sooner once
            ``batch_rows`` rows are waiting: under load the work comes in even rounds
            instead of a burst of full rounds every ``linger_s`` (which held responses
            back: p99 at 16 clients x 64 rows 1.7x the minimal server's with a 100 ms
            linger, 1.1-1.25x with rounds started at ``batch_rows``).
        dropped: called with (model, rows) for every drop (metrics).
        published: called with (model, rows) once Kafka acknowledged them.
        waited: called with (model, seconds) for every request that waited for room.
        log: a structlog logger.
        retry_s: first back-off after a failed send (doubled up to 2 s).
    """

    def __init__(
        self,
        send: Send,
        *,
        partitions: PartitionOf | None = None,
        buffer_rows: int,
        batch_rows: int,
        block_s: float = 5.0,
        linger_s: float = 0.0,
        dropped: Callable[[str, int], None],
        published: Callable[[str, int], None],
        waited: Callable[[str, float], None] | None = None,
        log: Any,
        retry_s: float = 0.05,
    ):
        self.send = send
        self.partitions = partitions
        self.buffer_rows = buffer_rows
        self.batch_rows = batch_rows
        self.block_s = block_s
        self.linger_s = linger_s
        self.dropped = dropped
        self.published = published
        self.waited = waited
        self.log = log
        self.retry_s = retry_s
        self._buffer: deque[Answered] = deque()
        self._rows = 0
        self._queued = 0  # rows in the buffer, not yet in a round
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending_rows(self) -> int:
        """Rows not yet acknowledged by Kafka (buffered or in flight)."""
        return self._rows

    async def submit(self, item: Answered) -> None:
        """Queue one answered request's events, waiting (at most ``block_s``) for room."""
        if self._rows + item.rows > self.buffer_rows and not self._closing:
            start = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.block_s):
                    while self._rows + item.rows > self.buffer_rows and not self._closing:
                        self._room.clear()
                        await self._room.wait()
            if self.waited is not None:
                self.waited(item.model.name, time.monotonic() - start)
        if self._closing or self._rows + item.rows > self.buffer_rows:
            self.dropped(item.model.name, item.rows)
            self.log.warning(
                "predictions.dropped",
                model=item.model.name,
                rows=item.rows,
                request_id=item.request_id,
                reason="stopping" if self._closing else "buffer full beyond the wait bound",
                buffered_rows=self._rows,
                block_s=self.block_s,
            )
            return
        self._buffer.append(item)
        self._rows += item.rows
        self._queued += item.rows
        if not self._wake.is_set():
            self._wake.set()
        if self._queued >= self.batch_rows and not self._full.is_set():
            self._full.set()

    async def start(self) -> None:
        """Start the publishing task."""
        self._task = asyncio.create_task(self._run(), name="prediction-publisher")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Publish what is buffered (for at most ``timeout_s``), then stop; the rest is counted
        as dropped."""
        self._closing = True
        self._wake.set()
        self._full.set()
        self._room.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for model, rows in _count(self._buffer).items():
            self.dropped(model, rows)
            self.log.warning("predictions.dropped", model=model, rows=rows, reason="stopping")
        self._buffer.clear()
        self._rows = 0
        self._queued = 0

    async def _run(self) -> None:
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.linger_s > 0 and self._queued < self.batch_rows and not self._closing:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.linger_s):
                        await self._full.wait()  # set by submit at batch_rows
            batch: list[Answered] = []
            rows = 0
            while self._buffer and rows < self.batch_rows:
                item = self._buffer.popleft()
                batch.append(item)
                rows += item.rows
            self._queued -= rows
            try:
                await self._publish(batch)
            except asyncio.CancelledError:
                self._buffer.extendleft(reversed(batch))  # stop() counts them as dropped
                self._queued += rows
                raise
            self._rows -= rows
            self._room.set()

    async def _publish(self, batch: list[Answered]) -> None:
        messages: list[Message] = []
        sent: list[Answered] = []
        partition_of = await self.partitions() if self.partitions is not None else _single
        now = time.time()
        yielded = time.perf_counter()
        for partition, items in group(batch, partition_of):
            if time.perf_counter() - yielded >= YIELD_S:
                await asyncio.sleep(0)  # let responses in between two groups' encodings
                yielded = time.perf_counter()
            try:
                encoded = _encoded(items, now)
            except Exception as exc:  # a shadow model failing must not stop the publisher
                for model, rows in _count(items).items():
                    self.log.error("predictions.serialise_failed", model=model, error=repr(exc))
                    self.dropped(model, rows)
                continue
            for part, value in encoded:
                if value is None:
                    [row] = part
                    self._refuse(row)
                    continue
                key = part[0].key.encode()
                messages.append(Message(partition, key, value, tuple(i.request_id for i in part)))
                sent.extend(part)
        if not messages:
            return
        delay = self.retry_s
        failures = 0
        while True:
            try:
                await self.send(messages)
                break
            except Exception as exc:
                # Kafka slow, restarting or unreachable: keep the rows (they count against
                # the buffer, so new requests wait, then drop, beyond the bound) and retry.
                failures += 1
                self.log.warning(
                    "predictions.publish_retry",
                    requests=len(messages),
                    failures=failures,
                    error=repr(exc),
                )
                if self._closing:
                    for model, rows in _count(sent).items():
                        self.dropped(model, rows)
                    return
                await asyncio.sleep(delay)  # back-off before the next attempt
                delay = min(2.0, delay * 2)
        for model, rows in _count(sent).items():
            self.published(model, rows)

    def _refuse(self, row: Answered) -> None:
        # Kafka refuses a record over its size limit whatever the retries: drop, count, log.
        self.dropped(row.model.name, 1)
        self.log.error(
            "predictions.dropped",
            model=row.model.name,
            rows=1,
            request_id=row.request_id,
            row=row.first_row,
            reason=f"its event encodes over the {MAX_MESSAGE_BYTES} bytes a record may take",
        )


def _single(key: bytes) -> int:
    return 0


def _encoded(items: list[Answered], created: float) -> list[tuple[list[Answered], bytes | None]]:
    """A group's message, or, when it encodes larger than Kafka takes, its halves': two
    groups, or a lone request's rows in two parts (their prediction ids continue). A row
    that alone encodes larger comes back with None: no record can carry it."""
    value = encode(items, created)
    if len(value) <= MAX_MESSAGE_BYTES:
        return [(items, value)]
    if len(items) > 1:
        half = len(items) // 2
        return _encoded(items[:half], created) + _encoded(items[half:], created)
    [item] = items
    if item.rows == 1:
        return [(items, None)]
    half = item.rows // 2
    return _encoded([item.rows_slice(0, half)], created) + _encoded(
        [item.rows_slice(half, item.rows)], created
    )


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.model.name] = counts.get(item.model.name, 0) + item.rows
    return counts
