"""Durable monitoring state: one snapshot per stream partition, named by its offsets.

Monitoring's stream is two co-partitioned topics: ``predictions`` (keyed by the request
key) and ``feedback.routed`` (feedback re-keyed by the routing key of its prediction id,
:mod:`.router`), so partition ``k`` of both holds everything one prediction's join needs.
At every checkpoint, after the prediction log is flushed, partition ``k``'s state - the
join's waiting predictions, held labels and lately joined ids, and ``k``'s share of every
window (quality rows, shadow agreement, the open drift window) with the trigger state
(:mod:`.window_state`) - is written as one immutable JSON object named by the two
topics' next offsets (``monitoring/state/<group>/<k>/<predictions>-<feedback>.json``),
and only then are those offsets committed. The committed offsets are the pointer: a
replica assigned partition ``k`` (first start, restart after SIGKILL, rebalance) reads
the group's committed offsets, loads the snapshot of exactly those offsets and resumes
from them, with the state they describe. (Commit metadata would be the natural pointer,
but the embedded broker does not keep it; offsets work on every broker.)

A crash after the snapshot but before the commit replays to the same offsets; the
snapshot already written for them is kept (the state at given offsets is the same).
Snapshots hold wall-clock ages (monotonic clocks do not survive a restart). A replica's
windows are the union of its partitions' shares, so after a restart its live metrics,
drift windows and triggers are those of the last checkpoint, and the replayed records
bring them to where a run without the restart is. Objects of
offsets no longer committed are garbage: an object-store lifecycle rule on
``monitoring/state/`` may expire objects older than a day.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from aiokafka.partitioner import murmur2

from shared import topics
from shared.events import routing_key
from shared.store import ArtifactStore, ImmutableObjectError

from .join import EarlyLabel, Pending
from .window_state import Clocks, Part, encode, restore

if TYPE_CHECKING:
    from .core import MonitoringCore

FORMAT = 2
"""Version of the snapshot layout: 2 added the windows and triggers."""
READABLE = (1, 2)
"""Layouts :meth:`PartitionSnapshots.read` accepts: a format-1 snapshot (join only, from
before windows were durable) restores its join, and its windows start empty."""
STREAM = (topics.PREDICTIONS, topics.FEEDBACK_ROUTED)
"""The co-partitioned topics, in the order their offsets name a snapshot."""


class Partitioner:
    """The partition a prediction id routes to, as Kafka's default partitioner puts its key.

    Args:
        partitions: the stream topics' partition count.
    """

    def __init__(self, partitions: int):
        self.partitions = partitions
        self._of_key = lru_cache(maxsize=65_536)(self._hash)

    def _hash(self, key: str) -> int:
        return int(murmur2(key.encode()) & 0x7FFFFFFF) % self.partitions

    def __call__(self, prediction_id: str) -> int:
        return self._of_key(routing_key(prediction_id))


@dataclass(frozen=True)
class Snapshot:
    """One partition's snapshot, read and converted to this process's clocks."""

    format: int
    pending: list[tuple[str, Pending]]
    early: list[EarlyLabel]
    joined: list[str]
    part: Part


class PartitionSnapshots:
    """Writes and reads partition snapshots of a :class:`~.core.MonitoringCore`.

    Args:
        store: the artifact store.
        group: the consumer group (snapshots of different groups never mix).
        clock: monotonic seconds (the core's clock).
    """

    def __init__(self, store: ArtifactStore, group: str, clock: Any = time.monotonic):
        self.store = store
        self.prefix = f"monitoring/state/{group}"
        self.clock = clock

    def _clocks(self) -> Clocks:
        return Clocks(self.clock(), time.time())

    def key(self, partition: int, offsets: Mapping[str, int]) -> str:
        """The snapshot object of ``partition`` at the topics' ``offsets`` (-1: none)."""
        span = "-".join(str(offsets.get(t, -1)) for t in STREAM)
        return f"{self.prefix}/{partition}/{span}.json"

    def save(self, core: MonitoringCore, partition: int, offsets: dict[str, int]) -> str:
        """Write partition ``partition``'s state at the topics' next ``offsets``; its key."""
        key = self.key(partition, offsets)
        if self.store.exists(key):
            return key  # a replay reached the same offsets: the same state is on record
        pending, early, joined = core.join.entries(partition)
        clocks = self._clocks()
        body = {
            "format": FORMAT,
            "partition": partition,
            "offsets": offsets,
            "stamp": core.stamps(),
            "pending": [{"id": k, **asdict(p), "at": clocks.to_wall(p.at)} for k, p in pending],
            "early": [
                {"id": e.prediction_id, "label": e.label, "at": clocks.to_wall(e.at)} for e in early
            ],
            "joined": joined,
            **encode(core, partition, clocks),
        }
        with contextlib.suppress(ImmutableObjectError):  # a concurrent identical checkpoint
            self.store.put(key, json.dumps(body, separators=(",", ":"), default=str).encode())
        return key

    def read(self, partition: int, offsets: Mapping[str, int]) -> Snapshot | None:
        """The snapshot at ``offsets`` (None when there is none).

        Raises:
            ValueError: a layout this version cannot read (it names the object).
        """
        key = self.key(partition, offsets)
        if not self.store.exists(key):
            return None
        body = json.loads(self.store.get(key))
        fmt = body.get("format")
        if fmt not in READABLE:
            raise ValueError(
                f"{key}: snapshot format {fmt!r}; this version reads formats {READABLE}"
            )
        clocks = self._clocks()
        pending = []
        for row in body["pending"]:
            fields = {k: v for k, v in row.items() if k != "id"}
            fields["at"] = clocks.to_monotonic(float(row["at"]))
            pending.append((str(row["id"]), Pending(**fields)))
        early = [
            EarlyLabel(str(row["id"]), row["label"], clocks.to_monotonic(float(row["at"])))
            for row in body["early"]
        ]
        part = Part(
            partition, int(body.get("stamp", 0)), body.get("windows", []), body.get("triggers")
        )
        return Snapshot(int(fmt), pending, early, [str(k) for k in body.get("joined", [])], part)

    def restore(self, core: MonitoringCore, snapshots: Iterable[Snapshot]) -> None:
        """Put newly assigned partitions' snapshots into ``core``: the join entries and,
        merged over the batch, the window shares and triggers (:mod:`.window_state`)."""
        snapshots = list(snapshots)
        for snap in snapshots:
            core.join.restore(snap.pending, snap.early, snap.joined)
        restore(core, [s.part for s in snapshots], self._clocks())
