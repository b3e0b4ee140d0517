"""A hand-driven clock for tests of time-dependent logic (cool-downs, back-off, ages)."""

from __future__ import annotations


class Clock:
    """Returns ``now`` when called; tests move time by setting ``now``.

    Args:
        now: the starting reading (each process's monotonic clock has its own origin, so
            tests of state carried across a restart start two clocks at different readings).
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
