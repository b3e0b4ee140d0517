"""The delayed-label join: predictions wait (bounded) for their feedback.

State is an insertion-ordered dict keyed by prediction id, capped by count and age;
a prediction pushed out before its label arrived is counted as evicted. Feedback can
be consumed before its prediction (they travel on different topics), so feedback for
an id that is not waiting is itself held, bounded the same way, until the prediction
shows up; feedback evicted from there never matched and is counted late.

Every entry belongs to the Kafka partition its prediction id routes to
(``partition_of``): :meth:`LabelJoin.entries` and :meth:`LabelJoin.restore` hand one
partition's entries to and from the durable snapshots (:mod:`.state`), and
:meth:`LabelJoin.drop` forgets a partition another replica took over.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pending:
    """What the join keeps of a served row until its label arrives."""

    model: str
    version: int
    role: str
    predicted: Any
    score: float | None
    groups: dict[str, str]
    shadow_version: int | None
    shadow_predicted: Any
    shadow_score: float | None
    at: float
    """Arrival time (monotonic seconds) used for age eviction."""


@dataclass(frozen=True)
class EarlyLabel:
    """Feedback waiting for its prediction."""

    prediction_id: str
    label: Any
    at: float


class LabelJoin:
    """Bounded map of predictions waiting for feedback.

    Args:
        max_pending: most predictions kept; the oldest is evicted beyond it.
        max_age_s: predictions older than this are evicted.
        partition_of: the partition a prediction id routes to (one partition when None).
    """

    def __init__(
        self,
        max_pending: int,
        max_age_s: float,
        partition_of: Callable[[str], int] | None = None,
    ):
        self.max_pending = max_pending
        self.max_age_s = max_age_s
        self.partition_of = partition_of or (lambda _id: 0)
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._early: OrderedDict[str, EarlyLabel] = OrderedDict()
        self._joined: OrderedDict[str, None] = OrderedDict()
        """Ids joined lately (bounded like the rest): a label's second copy is recognised."""

    def entries(
        self, partition: int
    ) -> tuple[list[tuple[str, Pending]], list[EarlyLabel], list[str]]:
        """The waiting predictions, held feedback and lately joined ids of one partition,
        oldest first."""
        part = self.partition_of
        pending = [(k, p) for k, p in self._pending.items() if part(k) == partition]
        early = [e for k, e in self._early.items() if part(k) == partition]
        joined = [k for k in self._joined if part(k) == partition]
        return pending, early, joined

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget every entry of ``partitions`` (now owned by another replica)."""
        gone = set(partitions)
        stores: tuple[OrderedDict[str, Any], ...] = (self._pending, self._early, self._joined)
        for store in stores:
            for key in [k for k in store if self.partition_of(k) in gone]:
                del store[key]

    def restore(
        self,
        pending: Iterable[tuple[str, Pending]],
        early: Iterable[EarlyLabel],
        joined: Iterable[str] = (),
    ) -> None:
        """Put back entries from a snapshot (merged by age with what is already held)."""
        for key, p in pending:
            self._pending[key] = p
        for e in early:
            self._early[e.prediction_id] = e
        for key in joined:
            self._remember_joined(key)
        self._pending = OrderedDict(sorted(self._pending.items(), key=lambda kv: kv[1].at))
        self._early = OrderedDict(sorted(self._early.items(), key=lambda kv: kv[1].at))

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, prediction_id: str, pending: Pending) -> list[Pending]:
        """Remember a prediction; the ones evicted to make room or for age."""
        self._pending[prediction_id] = pending
        self._pending.move_to_end(prediction_id)
        evicted: list[Pending] = []
        while len(self._pending) > self.max_pending:
            evicted.append(self._pending.popitem(last=False)[1])
        evicted.extend(self.expire(pending.at))
        return evicted

    def expire(self, now: float) -> list[Pending]:
        """Evict predictions older than ``max_age_s``; the evicted ones."""
        evicted: list[Pending] = []
        while self._pending:
            key, oldest = next(iter(self._pending.items()))
            if now - oldest.at <= self.max_age_s:
                break
            del self._pending[key]
            evicted.append(oldest)
        return evicted

    def match(self, prediction_id: str) -> Pending | None:
        """The waiting prediction for this feedback (removed), or None."""
        found = self._pending.pop(prediction_id, None)
        if found is not None:
            self._remember_joined(prediction_id)
        return found

    def was_joined(self, prediction_id: str) -> bool:
        """Whether this prediction was joined to a label lately."""
        return prediction_id in self._joined

    def _remember_joined(self, prediction_id: str) -> None:
        self._joined[prediction_id] = None
        while len(self._joined) > self.max_pending:
            self._joined.popitem(last=False)

    @property
    def early(self) -> int:
        """Feedback records waiting for their prediction."""
        return len(self._early)

    def hold(self, label: EarlyLabel) -> list[EarlyLabel]:
        """Keep feedback whose prediction has not arrived; the feedback evicted (late)."""
        self._early[label.prediction_id] = label
        self._early.move_to_end(label.prediction_id)
        evicted: list[EarlyLabel] = []
        while len(self._early) > self.max_pending:
            evicted.append(self._early.popitem(last=False)[1])
        return evicted + self.expire_early(label.at)

    def expire_early(self, now: float) -> list[EarlyLabel]:
        """Drop held feedback older than ``max_age_s``; the dropped records."""
        evicted: list[EarlyLabel] = []
        while self._early:
            key, oldest = next(iter(self._early.items()))
            if now - oldest.at <= self.max_age_s:
                break
            del self._early[key]
            evicted.append(oldest)
        return evicted

    def take_early(self, prediction_id: str) -> EarlyLabel | None:
        """The feedback that arrived before this prediction (removed), or None."""
        found = self._early.pop(prediction_id, None)
        if found is not None:
            self._remember_joined(prediction_id)
        return found
