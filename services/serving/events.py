"""Prediction events: buffered, serialised and published off the response path.

The data plane hands each answered request to :meth:`PredictionPublisher.submit`, which
appends it to a bounded in-memory buffer (no I/O, no serialisation). A background task
drains the buffer: it runs the shadow model (if any) on the same rows, turns each
request into one ``predictions`` event (the JSON of :class:`shared.events.PredictionBatch`,
rows column by column, keyed by the request key) and sends them in batches, waiting for
``acks=all``.

Nothing is dropped while Kafka is reachable: a failed send is retried with back-off
(the request's rows stay in the buffer), and when the buffer is full a request waits
for room - for at most ``block_s`` - before its response is returned. Only a request
that still finds no room after that bound (Kafka unreachable for longer than the
buffer lasts) has its events dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from shared.events import PREDICTIONS_SCHEMA_VERSION
from shared.features import MISSING_CATEGORY

from .inputs import Feeds
from .model import LoadedModel

Message = tuple[bytes, bytes, str]
"""(key, value, trace id) of one Kafka record."""
Send = Callable[[list[Message]], Awaitable[None]]
"""Publishes records and returns once Kafka acknowledged them (raises if it did not)."""
YIELD_S = 0.00025
"""Longest stretch of event encoding before the publisher lets waiting responses out.
Yielding after every request instead cost a loop round each (about as much as encoding
a batch-1 event), for responses that wait a quarter of a millisecond at most."""


@dataclass(slots=True)
class Answered:
    """One answered request, as the data plane hands it over."""

    model: LoadedModel
    role: str
    request_id: str
    key: str
    """The request key: the event's id and Kafka key, the prefix of its prediction ids."""
    feeds: Feeds
    outputs: dict[str, np.ndarray]
    rows: int
    shadow: LoadedModel | None
    latency_ms: float
    created: float
    """Unix time the request was answered."""


def _column(model: LoadedModel, name: str, values: np.ndarray) -> np.ndarray | list[Any]:
    if name in model.spec.numeric:
        # orjson writes a numeric array straight from its buffer, NaN (missing) as null.
        return np.ascontiguousarray(values[:, 0])
    column: list[Any] = values[:, 0].tolist()
    if MISSING_CATEGORY in column:  # one C-level scan; nulls are rare
        return [None if v == MISSING_CATEGORY else v for v in column]
    return column


def _array(values: np.ndarray) -> np.ndarray | list[Any]:
    """An output as orjson writes it: numeric arrays as they are, strings as a list."""
    return values.tolist() if values.dtype.kind in "OUS" else np.ascontiguousarray(values)


def _output_columns(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    if "prediction" in outputs:
        return {"prediction": _array(outputs["prediction"])}
    return {"label": _array(outputs["label"]), "probabilities": _array(outputs["probabilities"])}


def _dumps(body: dict[str, Any]) -> bytes:
    # orjson with numpy arrays is ~10x faster than json over tolist() (a sixth of the
    # serving process's time at 16 clients x 64 rows went to the json module).
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def to_event(item: Answered) -> bytes:
    """The ``predictions`` event (JSON of :class:`shared.events.PredictionBatch`) of one
    answered request: every row's inputs and outputs as columns, encoded in one go."""
    model = item.model
    shadow = None
    if item.shadow is not None:
        shadow = {
            "model_version": item.shadow.version,
            "data_version": item.shadow.data_version,
            "outputs": _output_columns(item.shadow.predict(item.feeds)),
        }
    return _dumps(
        {
            "schema_version": PREDICTIONS_SCHEMA_VERSION,
            "id": item.key,
            "created": datetime.fromtimestamp(item.created, UTC).isoformat(),
            "model": model.name,
            "model_version": model.version,
            "data_version": model.data_version,
            "request_id": item.request_id,
            "role": item.role,
            "latency_ms": item.latency_ms,
            "rows": item.rows,
            "inputs": {name: _column(model, name, item.feeds[name]) for name in model.spec.names},
            "outputs": _output_columns(item.outputs),
            "shadow": shadow,
        }
    )


class PredictionPublisher:
    """The bounded buffer and the task that empties it.

    Args:
        send: publishes a list of records (the Kafka producer adapter).
        buffer_rows: the most rows held (buffered or in flight).
        batch_rows: the most rows serialised and sent per round.
        block_s: the longest a request waits for room in a full buffer; after it its
            events are dropped (counted, logged).
        linger_s: how long a round waits for more rows before sending (fewer, larger
            sends under load; never on the response path).
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
        self._wake = asyncio.Event()
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
        if not self._wake.is_set():
            self._wake.set()

    async def start(self) -> None:
        """Start the publishing task."""
        self._task = asyncio.create_task(self._run(), name="prediction-publisher")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Publish what is buffered (for at most ``timeout_s``), then stop; the rest is counted
        as dropped."""
        self._closing = True
        self._wake.set()
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

    async def _run(self) -> None:
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.linger_s > 0 and self._rows < self.batch_rows and not self._closing:
                await asyncio.sleep(self.linger_s)
            batch: list[Answered] = []
            rows = 0
            while self._buffer and rows < self.batch_rows:
                item = self._buffer.popleft()
                batch.append(item)
                rows += item.rows
            try:
                await self._publish(batch)
            except asyncio.CancelledError:
                self._buffer.extendleft(reversed(batch))  # stop() counts them as dropped
                raise
            self._rows -= rows
            self._room.set()

    async def _publish(self, batch: list[Answered]) -> None:
        messages: list[Message] = []
        sent: list[Answered] = []
        yielded = time.perf_counter()
        for item in batch:
            if time.perf_counter() - yielded >= YIELD_S:
                await asyncio.sleep(0)  # let responses in between two requests' encodings
                yielded = time.perf_counter()
            try:
                value = to_event(item)
            except Exception as exc:  # a shadow model failing must not stop the publisher
                self.log.error(
                    "predictions.serialise_failed", model=item.model.name, error=repr(exc)
                )
                self.dropped(item.model.name, item.rows)
                continue
            messages.append((item.key.encode(), value, item.request_id))
            sent.append(item)
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


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.model.name] = counts.get(item.model.name, 0) + item.rows
    return counts
