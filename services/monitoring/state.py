"""Durable join state: one snapshot per stream partition, named by the offsets it holds.

Monitoring's stream is two co-partitioned topics: ``predictions`` (keyed by the request
key) and ``feedback.routed`` (feedback re-keyed by the routing key of its prediction id,
:mod:`.router`), so partition ``k`` of both holds everything one prediction's join needs.
At every checkpoint, after the prediction log is flushed, the waiting predictions and
held labels of partition ``k`` are written as one immutable JSON object named by the two
topics' next offsets (``monitoring/state/<group>/<k>/<predictions>-<feedback>.json``),
and only then are those offsets committed. The committed offsets are the pointer: a
replica assigned partition ``k`` (first start, restart after SIGKILL, rebalance) reads
the group's committed offsets, loads the snapshot of exactly those offsets and resumes
from them, with the state they describe. (Commit metadata would be the natural pointer,
but the embedded broker does not keep it; offsets work on every broker.)

A crash after the snapshot but before the commit replays to the same offsets; the
snapshot already written for them is kept (the state at given offsets is the same).
Snapshots hold wall-clock ages (monotonic clocks do not survive a restart). Objects of
offsets no longer committed are garbage: an object-store lifecycle rule on
``monitoring/state/`` may expire objects older than a day.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict
from functools import lru_cache
from typing import Any

from aiokafka.partitioner import murmur2

from shared import topics
from shared.events import routing_key
from shared.store import ArtifactStore, ImmutableObjectError

from .join import EarlyLabel, LabelJoin, Pending

FORMAT = 1
"""Version of the snapshot layout."""
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


class JoinSnapshots:
    """Writes and reads partition snapshots of a :class:`~.join.LabelJoin`.

    Args:
        store: the artifact store.
        group: the consumer group (snapshots of different groups never mix).
        clock: monotonic seconds (the join's clock).
    """

    def __init__(self, store: ArtifactStore, group: str, clock: Any = time.monotonic):
        self.store = store
        self.prefix = f"monitoring/state/{group}"
        self.clock = clock

    def key(self, partition: int, offsets: dict[str, int]) -> str:
        """The snapshot object of ``partition`` at the topics' ``offsets`` (-1: none)."""
        span = "-".join(str(offsets.get(t, -1)) for t in STREAM)
        return f"{self.prefix}/{partition}/{span}.json"

    def save(self, join: LabelJoin, partition: int, offsets: dict[str, int]) -> str:
        """Write partition ``partition``'s state at the topics' next ``offsets``; its key."""
        key = self.key(partition, offsets)
        if self.store.exists(key):
            return key  # a replay reached the same offsets: the same state is on record
        pending, early, joined = join.entries(partition)
        now, wall = self.clock(), time.time()
        body = {
            "format": FORMAT,
            "partition": partition,
            "offsets": offsets,
            "pending": [{"id": k, **asdict(p), "at": wall - (now - p.at)} for k, p in pending],
            "early": [
                {"id": e.prediction_id, "label": e.label, "at": wall - (now - e.at)} for e in early
            ],
            "joined": joined,
        }
        with contextlib.suppress(ImmutableObjectError):  # a concurrent identical checkpoint
            self.store.put(key, json.dumps(body, separators=(",", ":"), default=str).encode())
        return key

    def load(self, join: LabelJoin, partition: int, offsets: dict[str, int]) -> bool:
        """Restore the snapshot at ``offsets`` into ``join``; False when there is none."""
        key = self.key(partition, offsets)
        if not self.store.exists(key):
            return False
        body = json.loads(self.store.get(key))
        if body.get("format") != FORMAT:
            raise ValueError(f"{key}: snapshot format {body.get('format')!r} is not {FORMAT}")
        now, wall = self.clock(), time.time()
        pending = []
        for row in body["pending"]:
            fields = {k: v for k, v in row.items() if k != "id"}
            fields["at"] = now - (wall - float(row["at"]))
            pending.append((str(row["id"]), Pending(**fields)))
        early = [
            EarlyLabel(str(row["id"]), row["label"], now - (wall - float(row["at"])))
            for row in body["early"]
        ]
        join.restore(pending, early, [str(k) for k in body.get("joined", [])])
        return True
