"""Hysteresis and cool-down for monitoring's actions, so one bad window never loops.

A :class:`Trigger` fires when its condition held for ``consecutive`` evaluations in a
row and the same action on the same model has not fired within ``cooldown_s``. Its state
(streak, last firing) goes into every partition snapshot (:mod:`.state`), so a restart
neither forgets a cool-down (a crash loop would repeat the action) nor a streak.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Trigger:
    """One action's state for one model.

    Args:
        consecutive: evaluations in a row the condition must hold.
        cooldown_s: quiet time after firing.
    """

    consecutive: int
    cooldown_s: float
    streak: int = 0
    last_fired: float | None = None
    observations: int = 0
    """Evaluations recorded (0: a restored state may replace this one's streak)."""

    def observe(self, condition: bool, now: float) -> bool:
        """Record one evaluation; True when the action should fire now."""
        self.observations += 1
        self.streak = self.streak + 1 if condition else 0
        if self.streak < self.consecutive:
            return False
        if self.last_fired is not None and now - self.last_fired < self.cooldown_s:
            return False
        self.last_fired = now
        self.streak = 0
        return True

    def reset(self, cooldown: bool) -> None:
        """Start over: no streak, and with ``cooldown`` no quiet time either."""
        self.streak = 0
        if cooldown:
            self.last_fired = None
