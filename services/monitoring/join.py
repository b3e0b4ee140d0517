"""The delayed-label join: predictions wait (bounded) for their feedback.

State is an insertion-ordered dict keyed by prediction id, capped by count and age;
a prediction pushed out before its label arrived is counted as evicted. Feedback can
be consumed before its prediction (they travel on different topics and partitions),
so feedback for an id that is not waiting is itself held, bounded the same way, until
the prediction shows up; feedback evicted from there never matched and is counted late.
"""

from __future__ import annotations

from collections import OrderedDict
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
    """

    def __init__(self, max_pending: int, max_age_s: float):
        self.max_pending = max_pending
        self.max_age_s = max_age_s
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._early: OrderedDict[str, EarlyLabel] = OrderedDict()

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
        return self._pending.pop(prediction_id, None)

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
        return self._early.pop(prediction_id, None)
