"""Prediction events: buffered, serialised and published off the response path.

The data plane hands each answered request to :meth:`PredictionPublisher.submit`, which
only appends to a bounded in-memory buffer (no I/O, no serialisation). A background
task drains the buffer: it runs the shadow model (if any) on the same rows, turns each
row into a ``predictions`` event (the JSON of :class:`shared.events.Prediction`) and
sends them in batches. When the buffer is full - Kafka slow or down - new events are
dropped and counted, so memory stays bounded and responses never wait on Kafka.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from shared.events import SCHEMA_VERSION
from shared.features import MISSING_CATEGORY

from .inputs import Feeds
from .model import LoadedModel

Message = tuple[bytes, bytes, str]
"""(key, value, trace id) of one Kafka record."""
Send = Callable[[list[Message]], Awaitable[None]]
"""Publishes records and returns once Kafka acknowledged them (raises if it did not)."""


@dataclass(slots=True)
class Answered:
    """One answered request, as the data plane hands it over."""

    model: LoadedModel
    role: str
    request_id: str
    feeds: Feeds
    outputs: dict[str, np.ndarray]
    prediction_ids: list[str]
    shadow: LoadedModel | None
    latency_ms: float
    created: float
    """Unix time the request was answered."""


def _column(model: LoadedModel, name: str, values: np.ndarray) -> list[Any]:
    flat = values[:, 0].tolist()
    if name in model.spec.numeric:
        return [None if math.isnan(v) else v for v in flat]
    return [None if v == MISSING_CATEGORY else v for v in flat]


def _row_outputs(outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    if "prediction" in outputs:
        return [{"prediction": v} for v in outputs["prediction"].tolist()]
    labels = outputs["label"].tolist()
    probs = outputs["probabilities"].tolist()
    return [{"label": lab, "probabilities": p} for lab, p in zip(labels, probs, strict=True)]


YIELD_EVERY_ROWS = 128
"""Rows serialised between two yields to the event loop."""

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def to_events(item: Answered) -> list[bytes]:
    """The ``predictions`` events (JSON) of one answered request, one per row.

    The fields every row of a request shares are encoded once; each row adds its id,
    inputs and outputs (this runs for every served row, so it is kept cheap).
    """
    model = item.model
    columns = [(name, _column(model, name, item.feeds[name])) for name in model.spec.names]
    outputs = _row_outputs(item.outputs)
    shadow_rows: list[dict[str, Any]] | None = None
    if item.shadow is not None:
        shadow_rows = _row_outputs(item.shadow.predict(item.feeds))
    common = _dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "created": datetime.fromtimestamp(item.created, UTC).isoformat(),
            "model": model.name,
            "model_version": model.version,
            "data_version": model.data_version,
            "request_id": item.request_id,
            "role": item.role,
            "latency_ms": item.latency_ms,
        }
    )[:-1]
    events = []
    for i, pid in enumerate(item.prediction_ids):
        shadow = None
        if shadow_rows is not None and item.shadow is not None:
            shadow = {
                "model_version": item.shadow.version,
                "data_version": item.shadow.data_version,
                "outputs": shadow_rows[i],
            }
        inputs = {name: column[i] for name, column in columns}
        events.append(
            f'{common},"id":{_dumps(pid)},"inputs":{_dumps(inputs)},'
            f'"outputs":{_dumps(outputs[i])},"shadow":{_dumps(shadow)}}}'.encode()
        )
    return events


class PredictionPublisher:
    """The bounded buffer and the task that empties it.

    Args:
        send: publishes a list of records (the Kafka producer adapter).
        buffer_rows: the most rows held; beyond it events are dropped.
        batch_rows: the most rows serialised and sent per round.
        dropped: called with (model, rows) for every drop (metrics).
        published: called with (model, rows) once Kafka acknowledged them.
        log: a structlog logger.
        linger_s: how long a round waits for more rows before sending (fewer, larger
            sends under load; never on the response path).
    """

    def __init__(
        self,
        send: Send,
        *,
        buffer_rows: int,
        batch_rows: int,
        linger_s: float = 0.0,
        dropped: Callable[[str, int], None],
        published: Callable[[str, int], None],
        log: Any,
    ):
        self.send = send
        self.buffer_rows = buffer_rows
        self.batch_rows = batch_rows
        self.linger_s = linger_s
        self.dropped = dropped
        self.published = published
        self.log = log
        self._buffer: deque[Answered] = deque()
        self._rows = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending_rows(self) -> int:
        """Rows waiting to be published."""
        return self._rows

    def submit(self, item: Answered) -> None:
        """Queue one answered request's events, or drop and count them if the buffer is full."""
        rows = len(item.prediction_ids)
        if self._closing or self._rows + rows > self.buffer_rows:
            self.dropped(item.model.name, rows)
            return
        self._buffer.append(item)
        self._rows += rows
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
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._buffer:
            item = self._buffer.popleft()
            self.dropped(item.model.name, len(item.prediction_ids))
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
                rows += len(item.prediction_ids)
            await self._publish(batch)
            self._rows -= rows

    async def _publish(self, batch: list[Answered]) -> None:
        messages: list[Message] = []
        counts: dict[str, int] = {}
        since_yield = 0
        for item in batch:
            if since_yield >= YIELD_EVERY_ROWS:
                # Serialising thousands of rows at once would stall the event loop and
                # with it the responses: let requests in between.
                await asyncio.sleep(0)
                since_yield = 0
            since_yield += len(item.prediction_ids)
            try:
                values = to_events(item)
            except Exception as exc:  # a shadow model failing must not stop the publisher
                self.log.error(
                    "predictions.serialise_failed", model=item.model.name, error=repr(exc)
                )
                self.dropped(item.model.name, len(item.prediction_ids))
                continue
            key = item.model.name.encode()
            messages.extend((key, v, item.request_id) for v in values)
            counts[item.model.name] = counts.get(item.model.name, 0) + len(values)
        if not messages:
            return
        try:
            await self.send(messages)
        except Exception as exc:
            self.log.warning("predictions.publish_failed", rows=len(messages), error=repr(exc))
            for model, n in counts.items():
                self.dropped(model, n)
            return
        for model, n in counts.items():
            self.published(model, n)
