"""The retrain policy: which triggers justify a run, and their idempotence keys.

A run's reasons come from the contract's :class:`~shared.contract.TrainingPolicy`:
a first model once ``min_rows`` rows exist, ``min_new_rows`` rows since the last
model's dataset, a drift verdict (``retrain_on_drift``), a schedule, or an explicit
request. Each reason has a stable *kind*; (model, dataset version, kind) is the key
that stops a replayed event from training twice. A run that registers a fast first
candidate and then the searched model (:mod:`.fast_first`) is one run for its
triggers: they are recorded as handled after the searched version, and a fast
candidate as the newest version still leaves the first model due.

Drift and quality triggers (validation's drift verdict, monitoring's requests, whose
``evidence.trigger`` names them) respond to the data a model saw: on a dataset version a
registered version was already trained on they *wait for new data* instead of training
an identical model again (:func:`decide`), and the first run on a newer dataset version
carries them. A person's request is keyed by its words, so a replay trains once and a new
request is a deliberate retrain.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from shared.contract import Contract
from shared.events import DatasetValidated, RetrainRequest
from shared.registry import ModelManifest
from shared.store import canonical_json, sha256_hex

from .fast_first import is_fast_first


@dataclass(frozen=True)
class Reason:
    """Why a run happens: a stable ``kind`` (for idempotence) and words (for people)."""

    kind: str
    text: str


def reasons(
    contract: Contract,
    *,
    last: ModelManifest | None,
    rows: int,
    validated: list[DatasetValidated],
    requests: list[RetrainRequest],
    schedule_period: int | None = None,
) -> list[Reason]:
    """Every reason to train now (empty: the policy says no).

    Args:
        contract: the model's contract.
        last: the newest registered version (None: no model yet; a fast first
            candidate counts as none, its searched model being still due).
        rows: rows in the dataset version a run would use.
        validated: ``data.validated`` events coalesced into this decision.
        requests: ``retrain.requests`` events coalesced into this decision.
        schedule_period: the schedule period that fell due (``now // schedule_seconds``).
    """
    policy = contract.training
    out: list[Reason] = []
    if last is None or is_fast_first(last):
        if rows >= policy.min_rows:
            out.append(Reason("first-model", f"first model ({rows} rows >= {policy.min_rows})"))
    else:
        base = int((last.model_extra or {}).get("dataset_rows", 0))
        new = rows - base
        if new >= policy.min_new_rows:
            out.append(
                Reason(
                    "new-rows",
                    f"{new} new rows since v{last.version}'s dataset "
                    f"(min_new_rows {policy.min_new_rows})",
                )
            )
        drifted = sorted(
            {f for ev in validated if ev.drift.drifted for f in ev.drift.drifted_features}
        )
        if policy.retrain_on_drift and any(ev.drift.drifted for ev in validated):
            out.append(
                Reason("drift", "drift reported by validation: " + (", ".join(drifted) or "label"))
            )
        if schedule_period is not None:
            out.append(
                Reason(
                    f"schedule:{schedule_period}", f"schedule (every {policy.schedule_seconds}s)"
                )
            )
    for request in requests:
        out.append(
            Reason(request_kind(request), f"requested by {request.requested_by}: {request.reason}")
        )
    if (last is None or is_fast_first(last)) and requests and rows < policy.min_rows:
        # An explicit request cannot conjure a first model out of too few rows.
        return []
    unique: dict[str, Reason] = {}
    for reason in out:
        unique.setdefault(reason.kind, reason)
    return list(unique.values())


RESPONSIVE = ("drift", "quality")
"""Trigger kinds that answer to the data a model saw: never twice on the same data."""


def request_kind(request: RetrainRequest) -> str:
    """A request's kind: monitoring's ``drift``/``quality`` evidence, else its words."""
    trigger = request.evidence.get("trigger")
    if trigger in RESPONSIVE:
        return str(trigger)
    return f"request:{request.reason}"


@dataclass(frozen=True)
class Decision:
    """What to do with the reasons for one dataset version."""

    train: list[Reason] = field(default_factory=list)
    """Reasons for a run now (empty: no run)."""
    defer: list[Reason] = field(default_factory=list)
    """Drift/quality reasons on data already trained on: they wait for new data."""
    handled: list[Reason] = field(default_factory=list)
    """Reasons already acted on for this dataset version (replays)."""
    trained_by: int | None = None
    """The newest version trained on this dataset version, if any."""


def decide(
    why: list[Reason],
    *,
    dataset_version: str,
    trained_on: Mapping[str, int],
    handled: Collection[str],
    waiting: Collection[Reason] = (),
) -> Decision:
    """Split ``why`` into reasons to train now, to defer, and already handled.

    Args:
        why: the reasons :func:`reasons` found.
        dataset_version: the dataset version a run would use.
        trained_on: dataset version -> the newest registered version trained on it.
        handled: kinds whose trigger key for ``dataset_version`` is already recorded.
        waiting: drift/quality reasons deferred on the newest model's dataset version;
            they join the first run on a newer one.
    """
    trained_by = trained_on.get(dataset_version)
    train: list[Reason] = []
    defer: list[Reason] = []
    done: list[Reason] = []
    for reason in why:
        if reason.kind in RESPONSIVE and trained_by is not None:
            defer.append(reason)  # even after a run for it: the drift outlived that model
        elif reason.kind in handled:
            done.append(reason)
        else:
            train.append(reason)
    if trained_by is None:
        # New data since the drift was seen: reason enough on its own, or joins the run.
        kinds = {r.kind for r in train}
        train += [r for r in waiting if r.kind not in kinds and r.kind not in handled]
    return Decision(train, defer, done, trained_by)


def trigger_key(model: str, dataset_version: str, kind: str) -> str:
    """The idempotence key of (model, dataset version, reason kind)."""
    return sha256_hex(canonical_json([model, dataset_version, kind]))
