"""Hysteresis and cool-down for monitoring's actions, so one bad window never loops.

A :class:`Trigger` fires when its condition held for ``consecutive`` evaluations in a
row and the same action on the same model has not fired within ``cooldown_s``.
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

    def observe(self, condition: bool, now: float) -> bool:
        """Record one evaluation; True when the action should fire now."""
        self.streak = self.streak + 1 if condition else 0
        if self.streak < self.consecutive:
            return False
        if self.last_fired is not None and now - self.last_fired < self.cooldown_s:
            return False
        self.last_fired = now
        self.streak = 0
        return True
