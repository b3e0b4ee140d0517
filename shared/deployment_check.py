"""What may serve: deployment events checked against the registry.

Serving runs this check before it loads anything; monitoring runs the same check before
it follows a deployment, so both act on the registry's decisions only.

The registry is the single source of truth. A ``models.deployments`` event is only a
signed announcement that training recorded a decision; before anything is loaded,
:meth:`DeploymentCheck.check` verifies, in this order:

1. the HMAC signature (``signature``; ``no_key`` when serving has no key);
2. the canary share, in (0, 100] (``canary_share``; never defaulted);
3. the model is served here (``unknown_model``) and the version is registered
   (``unknown_version``);
4. the event's ONNX sha256 is the manifest's (``digest``; the bytes are checked against
   the manifest again when loaded);
5. the version may serve (:mod:`shared.approval`: ``parity``, ``gates``, ``approval``);
6. the alias history holds exactly this decision: the entries naming this deployment
   are the ones the event lists (``not_recorded``), and the registry's state after them
   is the state the event states (``mismatch``).

What serving then serves is the registry's state after those entries, never a field
of the event alone. At start-up :meth:`DeploymentCheck.restore` gives the registry's
current state, with any version that may not serve left out (counted the same way).
Transport-free: reads the registry, returns states or raises :class:`Refused`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from shared.approval import refusal
from shared.contract import Contract
from shared.events import Deployment
from shared.registry import ALIASES, AliasState, Registry
from shared.signing import verify


class Refused(ValueError):
    """A deployment serving will not apply; ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def valid_share(percent: float | None) -> bool:
    """True for a canary share serving can honour: a number in (0, 100]."""
    return percent is not None and 0 < percent <= 100


class DeploymentCheck:
    """Checks deployments and start-up state against the registry.

    Args:
        contracts: the served contracts (their promotion strategy).
        registry: the model registry (read only).
        key: the deploy key (None: every event is refused with ``no_key``).
    """

    def __init__(self, contracts: dict[str, Contract], registry: Registry, key: bytes | None):
        self.contracts = contracts
        self.registry = registry
        self.key = key

    def check(self, event: Deployment) -> AliasState:
        """The registry state ``event`` announces; raises :class:`Refused` otherwise."""
        if self.key is None:
            raise Refused("no_key", "serving has no deploy key: deployments cannot be verified")
        if not verify(event, self.key):
            raise Refused("signature", "the signature does not match the event's body")
        if (event.action == "canary" or event.challenger_mode == "canary") and not valid_share(
            event.canary_percent
        ):
            raise Refused("canary_share", f"canary share {event.canary_percent} is not in (0, 100]")
        contract = self.contracts.get(event.model)
        if contract is None:
            raise Refused("unknown_model", f"model {event.model!r} is not served here")
        if event.action != "retire":
            # "" (none named) never matches a manifest's sha256: refused as ``digest``.
            self._check_version(contract, event.version, event.manifest_sha256 or "")
        history = self.registry.history(event.model)
        recorded = [
            c.seq
            for c in history
            if c.alias in ALIASES and c.detail.get("deployment_id") == event.id
        ]
        if not event.history or recorded != event.history:
            raise Refused(
                "not_recorded",
                f"the alias history records entries {recorded} for deployment {event.id}, "
                f"the event names {event.history}",
            )
        state = AliasState.of(history[: event.history[-1] + 1])
        claimed = (
            event.champion_version,
            event.challenger_version,
            event.challenger_mode,
            event.canary_percent if event.challenger_mode == "canary" else None,
        )
        actual = (state.champion, state.challenger, state.mode, state.canary_percent)
        if claimed != actual:
            raise Refused(
                "mismatch",
                f"the event states (champion, challenger, mode, share) {claimed}, "
                f"the registry after entry {state.seq} says {actual}",
            )
        for version in (state.champion, state.challenger):
            if version is not None and version != event.version:
                self._check_version(contract, version, None)
        return state

    def restore(self, model: str, refused: Callable[[Refused], None]) -> AliasState:
        """The registry's current state of ``model``, without versions that may not serve
        (each reported to ``refused``); a challenger without a champion is left out."""
        contract = self.contracts[model]
        state = self.registry.state(model)
        if state.champion is not None:
            try:
                self._check_version(contract, state.champion, None)
            except Refused as err:
                refused(err)
                state = replace(state, champion=None)
        if state.challenger is not None:
            try:
                if state.champion is None:
                    raise Refused(
                        "no_champion", "a challenger needs a champion to be compared with"
                    )
                if state.mode == "canary" and not valid_share(state.canary_percent):
                    raise Refused(
                        "canary_share",
                        f"the registry's canary share {state.canary_percent} is not in (0, 100]",
                    )
                self._check_version(contract, state.challenger, None)
            except Refused as err:
                refused(err)
                state = replace(state, challenger=None, mode=None, canary_percent=None)
        return state

    def _check_version(self, contract: Contract, version: int, sha256: str | None) -> None:
        try:
            manifest = self.registry.get(contract.name, version)
        except KeyError as err:
            raise Refused("unknown_version", str(err.args[0])) from None
        if sha256 is not None and sha256 != manifest.onnx_sha256:
            raise Refused(
                "digest",
                f"{contract.name} v{version}: the event's ONNX sha256 {sha256[:12]} is not "
                f"the manifest's {manifest.onnx_sha256[:12]}",
            )
        refused = refusal(
            manifest,
            self.registry.approvals(contract.name, version),
            contract.promotion.strategy,
        )
        if refused is not None:
            raise Refused(refused.reason, refused.message)
