"""Deployment decisions: training, the registry's one writer, turns requests into alias
changes and announces each decision as a :class:`~shared.events.Deployment`.

Requests come from training itself (a new model, as its contract's strategy says),
from ``flywheel promote/rollback/approve`` and from monitoring (``deployment.requests``).
Each is checked with :mod:`shared.approval` (parity, failed gates and their overrides,
manual approval), recorded in the alias history, and answered by a deployment naming
the history entries it wrote; the publisher signs it. A replayed request finds its
entries already recorded and gets the same deployment again (same id), which serving
treats as a repeat.
"""

from __future__ import annotations

from shared.approval import override_problem, refusal
from shared.contract import Contract
from shared.events import Deployment, DeploymentAction, DeploymentRequest, new_id
from shared.registry import AliasChange, ModelManifest, Registry

ACTOR = "training"
SERVING_ACTIONS = ("promote", "shadow", "canary", "rollback")


class DeploymentRefused(ValueError):
    """A request the registry cannot apply; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def planned_action(
    contract: Contract, *, passed: bool, has_champion: bool
) -> DeploymentAction | None:
    """The deployment the contract's strategy asks for a new model (None: not deployed).

    A model failing a gate is never deployed; ``manual`` waits for ``flywheel approve``
    and ``flywheel promote``; with no champion yet there is nothing to shadow or canary
    against, so a first model that passes its gates is promoted directly.
    """
    strategy = contract.promotion.strategy
    if not passed or strategy == "manual":
        return None
    if strategy == "direct" or not has_champion:
        return "promote"
    return "shadow" if strategy == "shadow" else "canary"


def new_model_request(
    contract: Contract, version: int, action: DeploymentAction, reason: str
) -> DeploymentRequest:
    """Training's own request for a model it just registered."""
    return DeploymentRequest(
        model=contract.name,
        action=action,
        version=version,
        canary_percent=contract.promotion.canary_percent if action == "canary" else None,
        actor=ACTOR,
        reason=reason,
    )


def record_decision(
    registry: Registry, contract: Contract, request: DeploymentRequest
) -> Deployment | None:
    """Record ``request`` in the registry; the deployment announcing it (None: nothing
    serving needs to know, e.g. an approval or a change that moves no alias).

    Raises :class:`DeploymentRefused` for a request that cannot be applied; nothing is
    recorded then.
    """
    model, version = request.model, request.version
    history = registry.history(model)
    recorded = [c for c in history if c.detail.get("request_id") == request.id]
    if recorded:
        return _announce(registry, request, recorded)  # a replayed request
    try:
        manifest = registry.get(model, version)
    except KeyError as err:
        raise DeploymentRefused("unknown_version", str(err.args[0])) from None
    problem = override_problem(manifest, request.overrides)
    if problem is not None:
        raise DeploymentRefused("override", problem)
    if request.action == "approve":
        registry.approve(
            model,
            version,
            actor=request.actor,
            reason=request.reason,
            overrides=request.overrides,
            detail={"request_id": request.id},
        )
        return None
    aliases = registry.aliases(model)
    if request.action in SERVING_ACTIONS:
        _check_servable(registry, contract, manifest, request)
    if request.action in ("shadow", "canary") and aliases["champion"] in (None, version):
        raise DeploymentRefused(
            "no_champion",
            f"{model} v{version} cannot be a {request.action}: "
            + ("there is no champion" if aliases["champion"] is None else "it is the champion"),
        )
    if request.action == "canary":
        percent = request.canary_percent
        if percent is None or not 0 < percent <= 100:
            raise DeploymentRefused(
                "canary_share", f"a canary needs canary_percent in (0, 100], got {percent}"
            )
    if request.action == "retire" and aliases["challenger"] != version:
        raise DeploymentRefused(
            "not_challenger",
            f"{model} v{version} is not the challenger (challenger: {aliases['challenger']})",
        )
    deployment_id = new_id()
    if request.overrides:
        registry.approve(
            model,
            version,
            actor=request.actor,
            reason=request.reason,
            overrides=request.overrides,
            detail={"request_id": request.id, "deployment_id": deployment_id},
        )
    changes: list[AliasChange] = []

    def move(alias: str, to: int | None, detail: dict[str, object] | None = None) -> None:
        tags = {"action": request.action, "request_id": request.id}
        changes.append(
            registry.set_alias(
                model,
                alias,
                to,
                actor=request.actor,
                reason=request.reason,
                detail=dict(detail or {}) | tags | {"deployment_id": deployment_id},
            )
        )

    if request.action in ("promote", "rollback"):
        if aliases["champion"] != version:
            move("champion", version)
        if aliases["challenger"] is not None and (
            request.action == "rollback" or aliases["challenger"] == version
        ):
            move("challenger", None)
    elif request.action == "shadow":
        move("challenger", version, {"mode": "shadow"})
    elif request.action == "canary":
        move("challenger", version, {"mode": "canary", "canary_percent": request.canary_percent})
    else:
        move("challenger", None)
    return _announce(registry, request, changes) if changes else None


def _check_servable(
    registry: Registry, contract: Contract, manifest: ModelManifest, request: DeploymentRequest
) -> None:
    approvals = registry.approvals(manifest.model, manifest.version)
    if request.overrides:  # recorded together with the change: count it now
        approvals = [
            *approvals,
            AliasChange(
                seq=-1,
                alias="approval",
                version=manifest.version,
                previous=None,
                actor=request.actor,
                reason=request.reason,
                detail={"overrides": request.overrides},
            ),
        ]
    refused = refusal(manifest, approvals, contract.promotion.strategy)
    if refused is not None:
        raise DeploymentRefused(refused.reason, refused.message)


def _announce(
    registry: Registry, request: DeploymentRequest, changes: list[AliasChange]
) -> Deployment | None:
    """The deployment for the alias changes ``changes`` (all of one decision)."""
    moves = [c for c in changes if c.alias != "approval"]
    if not moves:
        return None
    state = registry.state(request.model, upto=moves[-1].seq)
    manifest = registry.get(request.model, request.version)
    action = request.action
    assert action != "approve"
    return Deployment(
        id=str(moves[0].detail["deployment_id"]),
        model=request.model,
        action=action,
        version=request.version,
        champion_version=state.champion,
        challenger_version=state.challenger,
        challenger_mode=state.mode,
        canary_percent=state.canary_percent,
        history=[c.seq for c in moves],
        manifest_sha256=manifest.onnx_sha256,
        request_id=request.id,
        actor=request.actor,
        reason=request.reason,
    )
