"""The window and trigger parts of a partition snapshot (:mod:`.state`).

What partition ``k``'s snapshot holds besides its join entries:

- per model version, ``k``'s share of the quality window (the labelled rows joined on
  ``k`` still in the window, columnar, with their stamps, and how many rows ``k`` ever
  added), of the shadow agreement window, and of the open drift window (counts and sums
  on the reference bins, prediction counts: O(bins), whatever the window size);
- every model's trigger state (streak, evaluations seen, last firing as wall time) and
  the champion and challenger it was observed under.

Restoring a batch of partitions (one assignment) follows three rules, each exact for a
restart and never counting a row twice after a rebalance:

- quality and agreement shares are merged by stamp, the newest ``window_rows`` kept
  (:mod:`.windows` says why that is the window at the last checkpoint); the evaluation
  schedule resumes at ``rows ever added % eval_every_labels``, as if never stopped;
- drift shares count only when they belong to the newest window among those restored
  (``opened``): a window closes while one partition's record is handled, that partition is
  checkpointed with the new ``opened``, so an older share is one of a window already
  scored. (After a rebalance a share of another replica's window may lose to this one's,
  and is then left out: at most one partial window of that partition is not counted;
  so may a share in a snapshot kept from before a crash, when the replay reached the same
  offsets and the object on record was not rewritten);
- triggers come from the newest snapshot; a replica that evaluated already keeps its own
  streaks, and a cool-down is the later of the two (a restart never shortens one). When
  the champion or challenger changed since (the registry's aliases, read at start, are
  the truth), the promote and rollback streaks start again, as the deployment made them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .quality import Labelled
from .window_drift import DriftShare

if TYPE_CHECKING:
    from .core import MonitoringCore


@dataclass(frozen=True)
class Clocks:
    """The core's monotonic now and the wall-clock now, read together (for conversions)."""

    now: float
    wall: float

    def to_wall(self, at: float) -> float:
        """A monotonic time as wall-clock seconds (monotonic clocks end with the process)."""
        return self.wall - (self.now - at)

    def to_monotonic(self, wall: float) -> float:
        """A wall-clock time written by an earlier process as this process's monotonic."""
        return self.now - (self.wall - wall)


def encode(core: MonitoringCore, partition: int, clocks: Clocks) -> dict[str, Any]:
    """The ``windows`` and ``triggers`` of partition ``partition``'s snapshot."""
    windows: list[dict[str, Any]] = []
    for name, state in core.models.items():
        for version, vs in state.versions.items():
            entry: dict[str, Any] = {"model": name, "version": version}
            joined, rows = vs.quality.of(partition)
            if joined or rows:
                entry["quality"] = _rows(joined, rows, state.contract.groups)
            agreement = vs.agreement.of(partition)
            if agreement:
                entry["agreement"] = {
                    "stamps": _deltas([s for s, _ in agreement]),
                    "agrees": [a for _, a in agreement],
                }
            if vs.drift is not None:
                # Even an empty share: it carries the open window's name (``opened``).
                entry["drift"] = asdict(vs.drift.share(partition))
            if len(entry) > 2:
                windows.append(entry)
    triggers = {
        name: {
            "deployed": [state.champion, state.challenger],
            **{
                kind: {
                    "streak": t.streak,
                    "observations": t.observations,
                    "last_fired": (None if t.last_fired is None else clocks.to_wall(t.last_fired)),
                }
                for kind, t in state.triggers().items()
            },
        }
        for name, state in core.models.items()
    }
    return {"windows": windows, "triggers": triggers}


def _deltas(stamps: Sequence[int]) -> list[int]:
    # Gaps between consecutive stamps: a few digits each instead of nineteen.
    return [b - a for a, b in zip([0, *stamps], stamps, strict=False)]


def _undeltas(deltas: Sequence[int]) -> list[int]:
    out, at = [], 0
    for d in deltas:
        at += int(d)
        out.append(at)
    return out


def _codes(values: Sequence[Any]) -> dict[str, Any]:
    # A group column has a handful of distinct values: store each once.
    names: dict[Any, int] = {}
    codes = [names.setdefault(v, len(names)) for v in values]
    return {"values": list(names), "codes": codes}


def _rows(joined: int, rows: Sequence[tuple[int, Labelled]], groups: Sequence[str]) -> Any:
    # Columns, not one object per row: the field names once, not per row.
    return {
        "joined": joined,
        "stamps": _deltas([s for s, _ in rows]),
        "truth": [r.truth for _, r in rows],
        "predicted": [r.predicted for _, r in rows],
        "score": [r.score for _, r in rows],
        "groups": {g: _codes([r.groups.get(g) for _, r in rows]) for g in groups},
    }


def _labelled(body: dict[str, Any]) -> list[tuple[int, Labelled]]:
    groups = {g: [col["values"][c] for c in col["codes"]] for g, col in body["groups"].items()}
    out = []
    columns = (_undeltas(body["stamps"]), body["truth"], body["predicted"], body["score"])
    for i, (stamp, truth, predicted, score) in enumerate(zip(*columns, strict=True)):
        values = {g: str(col[i]) for g, col in groups.items() if col[i] is not None}
        out.append((stamp, Labelled(truth, predicted, score, values)))
    return out


@dataclass(frozen=True)
class Part:
    """The window and trigger parts of one partition's snapshot, as read."""

    partition: int
    stamp: int
    """When the snapshot was written (:class:`.windows.Stamps`): the newest one's
    triggers are restored."""
    windows: list[dict[str, Any]]
    triggers: dict[str, dict[str, Any]] | None


def restore(core: MonitoringCore, parts: Iterable[Part], clocks: Clocks) -> None:
    """Merge the window shares and trigger state of newly assigned partitions into
    ``core`` (the rules are in the module doc), then republish the figures."""
    parts = list(parts)
    shares: dict[tuple[str, int], list[tuple[int, DriftShare]]] = {}
    for part in parts:
        core.stamps.observe(part.stamp)
        for entry in part.windows:
            model, version = str(entry["model"]), int(entry["version"])
            vs = core.version_state(model, version)
            if vs is None:
                continue  # its contract is gone
            if "quality" in entry:
                body = entry["quality"]
                vs.quality.restore(part.partition, int(body["joined"]), _labelled(body))
            if "agreement" in entry:
                body = entry["agreement"]
                pairs = list(zip(_undeltas(body["stamps"]), body["agrees"], strict=True))
                vs.agreement.restore(part.partition, [(int(s), bool(a)) for s, a in pairs])
            if "drift" in entry:
                share = DriftShare(**entry["drift"])
                shares.setdefault((model, version), []).append((part.partition, share))
    for (model, version), found in shares.items():
        vs = core.version_state(model, version)
        if vs is None or vs.drift is None:
            continue
        opened = max(share.opened for _, share in found)
        for k, share in found:
            if share.opened == opened:
                vs.drift.restore(k, share)
    every = core.limits.eval_every_labels
    for state in core.models.values():
        for vs in state.versions.values():
            vs.quality.since_eval = vs.quality.total % every
    _triggers(core, parts, clocks)
    core.refresh()


def _triggers(core: MonitoringCore, parts: Sequence[Part], clocks: Clocks) -> None:
    newest = max((p for p in parts if p.triggers), key=lambda p: p.stamp, default=None)
    if newest is None or newest.triggers is None:
        return
    for name, kinds in newest.triggers.items():
        state = core.model(name)
        if state is None:
            continue
        live = state.triggers()
        moved = kinds.get("deployed") != [state.champion, state.challenger]
        for kind, saved in kinds.items():
            trigger = live.get(kind)
            if trigger is None:
                continue  # "deployed"
            # A promote/rollback streak and cool-down belong to the champion and challenger
            # they were saved with: a new arrangement starts clean (as on_deployment does).
            stale = moved and kind in ("promote", "rollback")
            if trigger.observations == 0 and not stale:
                trigger.streak = int(saved["streak"])
                trigger.observations = int(saved["observations"])
            if saved["last_fired"] is not None and not stale:
                fired = clocks.to_monotonic(float(saved["last_fired"]))
                if trigger.last_fired is None or fired > trigger.last_fired:
                    trigger.last_fired = fired
