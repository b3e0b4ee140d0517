"""The delayed-label join: predictions wait (bounded) for their feedback.

State is an insertion-ordered dict keyed by prediction id, capped by count and age;
a prediction pushed out before its label arrived is counted as evicted, and feedback
for an id that is not waiting (evicted, never seen, or already labelled) as late.
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
        """The waiting prediction for this feedback (removed), or None when late."""
        return self._pending.pop(prediction_id, None)
