"""Deduplication by event id with bounded memory, rebuilt from the store after a restart.

Each dataset has an :class:`IdWindow`: two generations of id sets. New ids go into the
young generation; when it holds half the window, the old one is dropped and the young
one becomes old. Memory is bounded by ``capacity`` ids and at least the last
``capacity / 2`` distinct ids are always remembered (a replay of anything newer than
that is recognised; much older replays are not, which is the documented trade-off).

The persisted index is the batches themselves: every flushed batch is logged in the
store (:class:`BatchLog`) and its Parquet object holds the ids. After a restart, or when
a replica is assigned new partitions, the window is refilled from the newest logged
batches, so re-reading uncommitted offsets after a crash adds no duplicate rows.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Iterator

import pyarrow.parquet as pq

from shared.events import BatchCreated
from shared.store import ArtifactStore


class IdWindow:
    """A bounded set of recently seen ids.

    Args:
        capacity: the most ids kept (two generations of ``capacity // 2``).
    """

    def __init__(self, capacity: int):
        self.generation = max(1, capacity // 2)
        self._young: set[str] = set()
        self._old: set[str] = set()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._young or event_id in self._old

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def add_many(self, ids: Iterable[str]) -> None:
        """Remember ``ids``."""
        young = self._young
        for i in ids:
            young.add(i)
            if len(young) >= self.generation:
                self._old, young = young, set()
                self._young = young

    def fresh(self, ids: list[str]) -> list[bool]:
        """For each id, True when it is new (not seen before nor earlier in ``ids``);
        the new ones are remembered."""
        young, old = self._young, self._old
        chunk = set(ids)
        if len(chunk) == len(ids) and young.isdisjoint(chunk) and old.isdisjoint(chunk):
            # The common case, all new: set operations in C instead of a loop per id.
            if len(young) + len(chunk) < self.generation:
                young |= chunk
            else:
                self.add_many(ids)
            return [True] * len(ids)
        out: list[bool] = []
        seen_here: set[str] = set()
        append = out.append
        for i in ids:
            new = i not in young and i not in old and i not in seen_here
            append(new)
            if new:
                seen_here.add(i)
        self.add_many(i for i, new in zip(ids, out, strict=True) if new)
        return out


class BatchLog:
    """The append-only log of flushed batches per dataset, in the artifact store.

    ``ingestion/<dataset>/batches/<time_ns>-<sha256>.json`` holds the
    :class:`~shared.events.BatchCreated` event of each batch, written after the Parquet
    object and before the event is published.

    Args:
        store: the artifact store.
    """

    def __init__(self, store: ArtifactStore):
        self.store = store

    def append(self, batch: BatchCreated) -> None:
        """Log ``batch``."""
        key = f"ingestion/{batch.dataset}/batches/{time.time_ns():020d}-{batch.batch_id}.json"
        self.store.put(key, batch.model_dump_json().encode())

    def datasets(self) -> list[str]:
        """Datasets with at least one logged batch."""
        return sorted({k.split("/")[1] for k in self.store.list("ingestion") if "/batches/" in k})

    def newest(self, dataset: str) -> Iterator[BatchCreated]:
        """Logged batches of ``dataset``, newest first (read lazily)."""
        for key in reversed(self.store.list(f"ingestion/{dataset}/batches")):
            yield BatchCreated.model_validate_json(self.store.get(key))

    def load_window(self, dataset: str, id_column: str, capacity: int) -> IdWindow:
        """A window holding the ids of the newest logged batches (up to ``capacity / 2``
        ids, oldest first, so the newest batches are in the young generation)."""
        window = IdWindow(capacity)
        chunks: list[list[str]] = []
        total = 0
        for batch in self.newest(dataset):
            if total >= window.generation:
                break
            data = io.BytesIO(self.store.get(batch.uri))
            table = pq.read_table(data, columns=[id_column])
            ids = table.column(id_column).to_pylist()
            chunks.append(ids)
            total += len(ids)
        for ids in reversed(chunks):
            window.add_many(ids)
        return window
