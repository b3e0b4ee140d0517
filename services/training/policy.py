"""The retrain policy: which triggers justify a run, and their idempotence keys.

A run's reasons come from the contract's :class:`~shared.contract.TrainingPolicy`:
a first model once ``min_rows`` rows exist, ``min_new_rows`` rows since the last
model's dataset, a drift verdict (``retrain_on_drift``), a schedule, or an explicit
request. Each reason has a stable *kind*; (dataset version, kind) is the key that
stops a replayed event from training twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.contract import Contract
from shared.events import DatasetValidated, RetrainRequest
from shared.registry import ModelManifest
from shared.store import canonical_json, sha256_hex


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
        last: the newest registered version (None: no model yet).
        rows: rows in the dataset version a run would use.
        validated: ``data.validated`` events coalesced into this decision.
        requests: ``retrain.requests`` events coalesced into this decision.
        schedule_period: the schedule period that fell due (``now // schedule_seconds``).
    """
    policy = contract.training
    out: list[Reason] = []
    if last is None:
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
            Reason(
                f"request:{request.reason}",
                f"requested by {request.requested_by}: {request.reason}",
            )
        )
    if last is None and requests and rows < policy.min_rows:
        # An explicit request cannot conjure a first model out of too few rows.
        return []
    unique: dict[str, Reason] = {}
    for reason in out:
        unique.setdefault(reason.kind, reason)
    return list(unique.values())


def trigger_key(model: str, dataset_version: str, kind: str) -> str:
    """The idempotence key of (model, dataset version, reason kind)."""
    return sha256_hex(canonical_json([model, dataset_version, kind]))
