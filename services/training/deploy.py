"""Deployments: what training publishes for a new model, and how events move the aliases.

Training is the registry's only writer: its own deployments and the requests from the
CLI and monitoring (``models.deployments`` events whose actor is not ``training``)
all become alias changes here, so the alias history records every one of them.
"""

from __future__ import annotations

from shared.contract import Contract
from shared.events import Deployment, DeploymentAction
from shared.registry import AliasChange, Registry

ACTOR = "training"


def planned_action(
    contract: Contract, *, passed: bool, has_champion: bool
) -> DeploymentAction | None:
    """The deployment the contract's strategy asks for a new model (None: not deployed).

    A model failing a gate is never deployed; ``manual`` waits for ``flywheel promote``;
    with no champion yet there is nothing to shadow or canary against, so a first
    model that passes its gates is promoted directly.
    """
    strategy = contract.promotion.strategy
    if not passed or strategy == "manual":
        return None
    if strategy == "direct" or not has_champion:
        return "promote"
    return "shadow" if strategy == "shadow" else "canary"


def new_model_deployment(
    contract: Contract, registry: Registry, version: int, action: DeploymentAction, reason: str
) -> Deployment:
    """The event training publishes for its own new model."""
    champion = registry.aliases(contract.name)["champion"]
    return Deployment(
        model=contract.name,
        action=action,
        version=version,
        champion_version=version if action == "promote" else champion,
        canary_percent=contract.promotion.canary_percent if action == "canary" else None,
        actor=ACTOR,
        reason=reason,
    )


class DeploymentRefused(ValueError):
    """A deployment request the registry cannot apply (unknown version, failed parity...)."""


def apply(registry: Registry, event: Deployment) -> list[AliasChange]:
    """Move the aliases as ``event`` says; the changes appended to the history.

    Raises :class:`DeploymentRefused` for a request that cannot be applied.
    """
    model, version = event.model, event.version
    try:
        manifest = registry.get(model, version)
    except KeyError as err:
        raise DeploymentRefused(str(err.args[0])) from None
    if event.action in ("promote", "shadow", "canary", "rollback") and not manifest.parity.passed:
        raise DeploymentRefused(f"{model} v{version} failed the ONNX parity gate: never deployed")
    if any(change.detail.get("event_id") == event.id for change in registry.history(model)):
        return []  # a replayed event: already applied
    aliases = registry.aliases(model)
    changes: list[AliasChange] = []

    def move(alias: str, to: int | None, detail: dict[str, object] | None = None) -> None:
        changes.append(
            registry.set_alias(
                model,
                alias,
                to,
                actor=event.actor,
                reason=event.reason,
                detail=dict(detail or {}) | {"action": event.action, "event_id": event.id},
            )
        )

    if event.action in ("promote", "rollback"):
        if aliases["champion"] != version:
            move("champion", version)
        if aliases["challenger"] is not None and (
            event.action == "rollback" or aliases["challenger"] == version
        ):
            move("challenger", None)
    elif event.action == "shadow":
        move("challenger", version, {"mode": "shadow"})
    elif event.action == "canary":
        percent = event.canary_percent
        if percent is None or not 0 < percent <= 100:
            raise DeploymentRefused(f"canary needs canary_percent in (0, 100], got {percent}")
        move("challenger", version, {"mode": "canary", "canary_percent": percent})
    elif event.action == "retire":
        if aliases["challenger"] != version:
            raise DeploymentRefused(
                f"{model} v{version} is not the challenger (challenger: {aliases['challenger']})"
            )
        move("challenger", None)
    return changes


def previous_champion(registry: Registry, model: str) -> int | None:
    """The champion before the current one (what ``rollback`` returns to), or None."""
    current = registry.aliases(model)["champion"]
    for change in reversed(registry.history(model)):
        if (
            change.alias == "champion"
            and change.version == current
            and change.previous is not None
            and change.previous != current
        ):
            return change.previous
    return None
