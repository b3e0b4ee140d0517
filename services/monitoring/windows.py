"""Sliding windows whose rows remember their stream partition, so they can be checkpointed.

Monitoring's windows (labelled rows per model version, shadow agreement) span every
partition a replica owns, but their durable state is written per partition
(:mod:`.state`). So each row carries the partition it came from and a :class:`Stamps`
stamp giving its place in the window: a partition's contribution is read back with
:meth:`PartitionedWindow.of`, put back with :meth:`PartitionedWindow.restore` (merged by
stamp with what is held, the newest ``size`` kept) and forgotten with
:meth:`PartitionedWindow.drop` when another replica takes the partition over.

Why restoring is exact: the window keeps the newest ``size`` rows, and a partition's rows
leave it only by being the oldest, so the rows of ``k`` in the window now are a subset of
those in any earlier snapshot of ``k``, and every row that left is older than every row
still in. The union of the owned partitions' latest snapshots, trimmed to the newest
``size`` by stamp, is therefore exactly the window at the last checkpoint.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Stamps:
    """Strictly increasing integer stamps that still order rows after a restart.

    Nanoseconds of wall time rather than a counter, so stamps handed out by one process
    compare with those a successor restores (clocks of replicas agree to NTP accuracy);
    bumped past the last stamp issued or restored, so the order stays strict when the
    clock steps back.

    Args:
        clock: wall-clock nanoseconds.
    """

    def __init__(self, clock: Callable[[], int] = time.time_ns):
        self.clock = clock
        self.last = 0

    def __call__(self) -> int:
        self.last = max(self.clock(), self.last + 1)
        return self.last

    def observe(self, stamp: int) -> None:
        """Hand out only stamps after ``stamp`` (one restored from a snapshot)."""
        self.last = max(self.last, stamp)


class PartitionedWindow(Generic[T]):
    """The newest ``size`` items of a stream, each with its partition and stamp.

    Args:
        size: items kept.
    """

    def __init__(self, size: int):
        self.size = size
        self._items: deque[tuple[int, int, T]] = deque(maxlen=size)

    def append(self, item: T, partition: int, stamp: int) -> None:
        """Add the newest item (``stamp`` above every stamp held)."""
        self._items.append((stamp, partition, item))

    def __iter__(self) -> Iterator[T]:
        return (item for _, _, item in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def of(self, partition: int) -> list[tuple[int, T]]:
        """The (stamp, item) pairs of one partition, oldest first."""
        return [(s, item) for s, p, item in self._items if p == partition]

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the items of ``partitions``."""
        gone = set(partitions)
        kept = [e for e in self._items if e[1] not in gone]
        self._items = deque(kept, maxlen=self.size)

    def restore(self, partition: int, entries: Iterable[tuple[int, T]]) -> None:
        """Put back one partition's (stamp, item) pairs, replacing any it has here; the
        newest ``size`` of the union are kept."""
        held = [e for e in self._items if e[1] != partition]
        back = sorted(((int(s), partition, item) for s, item in entries), key=lambda e: e[0])
        merged = heapq.merge(held, back, key=lambda e: e[0])
        self._items = deque(merged, maxlen=self.size)
