"""Adaptive batching: concurrent requests for one model merged into one ORT call.

Like Triton's dynamic batcher and MLServer's adaptive batching: the first request to
arrive opens a window of ``max_delay_s``; requests arriving within it join, up to
``max_batch_size`` rows, and the merged feeds run as one ONNX Runtime call whose outputs
are split back per request. With ``max_delay_s == 0`` nothing is queued at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import numpy as np

from .inputs import Feeds
from .model import LoadedModel

Outputs = dict[str, np.ndarray]
Observe = Callable[[int, float], None]
"""Called per merged call with (rows, seconds the oldest request waited)."""


class _Pending:
    __slots__ = ("enqueued", "feeds", "future", "rows")

    def __init__(self, feeds: Feeds, rows: int, future: asyncio.Future[Outputs]):
        self.feeds = feeds
        self.rows = rows
        self.future = future
        self.enqueued = time.perf_counter()


class AdaptiveBatcher:
    """Merges concurrent requests of one model version.

    Args:
        model: the model version the batches run on.
        max_batch_size: most rows in one merged call.
        max_delay_s: longest time the first request waits for others.
        observe: batch-size / queue-delay callback (metrics).
    """

    def __init__(
        self, model: LoadedModel, max_batch_size: int, max_delay_s: float, observe: Observe
    ):
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.observe = observe
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def predict(self, feeds: Feeds, rows: int) -> Outputs:
        """The outputs for one request's feeds, computed in a merged call."""
        if self._closed:
            # Retired while this request was being decoded: answer it directly.
            return self.model.predict(feeds)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"batcher-{self.model.name}")
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(feeds, rows, future))
        return await future

    async def close(self) -> None:
        """Answer everything queued, then stop."""
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(_Pending({}, 0, asyncio.get_running_loop().create_future()))
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        carry: _Pending | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            if first.rows == 0:
                return
            batch, rows = [first], first.rows
            deadline = first.enqueued + self.max_delay_s
            stop = False
            while rows < self.max_batch_size:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if item.rows == 0:
                    stop = True
                    break
                if rows + item.rows > self.max_batch_size:
                    carry = item
                    break
                batch.append(item)
                rows += item.rows
            self._execute(batch, rows)
            if stop:
                while not self._queue.empty():
                    left = self._queue.get_nowait()
                    if left.rows:
                        self._execute([left], left.rows)
                return

    def _execute(self, batch: list[_Pending], rows: int) -> None:
        self.observe(rows, time.perf_counter() - batch[0].enqueued)
        try:
            if len(batch) == 1:
                outputs = [self.model.predict(batch[0].feeds)]
            else:
                merged = {
                    name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds
                }
                result = self.model.predict(merged)
                outputs, start = [], 0
                for p in batch:
                    outputs.append({k: v[start : start + p.rows] for k, v in result.items()})
                    start += p.rows
        except Exception as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for p, out in zip(batch, outputs, strict=True):
            if not p.future.done():
                p.future.set_result(out)
