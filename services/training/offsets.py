"""Which offsets may be committed: only up to the first record whose effect is not durable."""

from __future__ import annotations

from aiokafka.structs import TopicPartition


class OffsetTracker:
    """Tracks records in flight per partition.

    A record is *tracked* when consumed and *done* when its effect is durable (a run
    finished, an alias written, a rejection counted). The committable offset of a
    partition is its lowest record still in flight, or one past the last record seen.
    """

    def __init__(self) -> None:
        self._open: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def track(self, tp: TopicPartition, offset: int) -> None:
        """A record was consumed."""
        self._open.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        """A record's effect is durable."""
        self._open.get(tp, set()).discard(offset)

    def committable(self) -> dict[TopicPartition, int]:
        """Offsets to commit now (only partitions that advanced since the last commit)."""
        out = {}
        for tp, nxt in self._next.items():
            still = self._open.get(tp)
            offset = min(still) if still else nxt
            if offset > self._committed.get(tp, -1):
                out[tp] = offset
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Record a successful commit."""
        self._committed.update(offsets)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop partitions this consumer no longer owns (after a rebalance)."""
        for tp in partitions:
            self._open.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
