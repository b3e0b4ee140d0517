"""Which loaded version answers a request: champion, canary share, pinned version.

A :class:`Slot` is an immutable snapshot of one model's deployment. The repository
replaces a model's slot with one assignment, so a request reads one consistent
snapshot and finishes on the versions it picked, whatever happens meanwhile.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

from .batching import AdaptiveBatcher
from .model import LoadedModel

ChallengerMode = Literal["shadow", "canary"]
Role = Literal["champion", "canary", "shadow", "pinned"]
BUCKETS = 10_000


@dataclass(slots=True)
class Served:
    """A loaded version and its batcher (None when batching is off)."""

    model: LoadedModel
    batcher: AdaptiveBatcher | None


@dataclass(frozen=True, slots=True)
class Slot:
    """One model's deployment: champion, optional challenger and how it is used."""

    champion: Served | None = None
    challenger: Served | None = None
    mode: ChallengerMode | None = None
    canary_percent: float = 0.0

    def versions(self) -> list[Served]:
        """The loaded versions, champion first."""
        return [s for s in (self.champion, self.challenger) if s is not None]

    def find(self, version: str) -> Served | None:
        """The loaded version called ``version`` (e.g. ``"3"``), if any."""
        for served in self.versions():
            if served.model.version_str == version:
                return served
        return None

    def role_of(self, served: Served) -> Role:
        """``champion``, or the challenger's mode."""
        if served is self.champion:
            return "champion"
        return "canary" if self.mode == "canary" else "shadow"


def canary_bucket(request_id: str) -> int:
    """A stable bucket in [0, 10000) for ``request_id``: the same id always lands in the
    same bucket, on every replica (crc32, not Python's salted ``hash``)."""
    return zlib.crc32(request_id.encode()) % BUCKETS


def in_canary(request_id: str, percent: float) -> bool:
    """Whether ``request_id`` falls in the canary's share."""
    return canary_bucket(request_id) < percent * (BUCKETS / 100)
