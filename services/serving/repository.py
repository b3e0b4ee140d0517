"""Loaded models per contract: start-up from the registry, deployments, atomic swaps.

What serves is always a state of the registry (:class:`~shared.registry.AliasState`):
at start-up its current state, afterwards the state each verified deployment event
announces (:mod:`.deployments`). An event that is refused, or whose versions cannot be
loaded, changes nothing.

Loading (read the manifest, verify the ONNX sha256, build and warm up the session)
runs in a worker thread; only the final slot assignment happens on the event loop, so
requests keep being answered during a load and in-flight requests finish on the
versions they started with. Manifests are immutable, so a version is loaded by number.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.contract import Contract
from shared.deployment_check import DeploymentCheck, Refused
from shared.events import Deployment
from shared.registry import AliasState, Registry, TamperedArtifactError

from .batching import AdaptiveBatcher
from .errors import ServingError, not_found
from .inputs import InputSpec
from .metrics import ServingMetrics
from .model import LoadedModel
from .routing import Role, Served, Slot, in_canary


class ModelRepository:
    """Every served model's current :class:`Slot`.

    Args:
        contracts: the data contracts by name (the servable model names).
        registry: the model registry (read only).
        metrics: the service's metrics.
        log: a structlog logger.
        max_batch_size: request size limit and batcher cap.
        batch_max_delay_s: adaptive batching window (0: off).
        intra_op_threads: ONNX Runtime intra-op threads per session.
        deploy_key: the key deployment events must be signed with (None: every event
            is refused; the registry's state is still served at start-up).
    """

    def __init__(
        self,
        contracts: dict[str, Contract],
        registry: Registry,
        metrics: ServingMetrics,
        log: Any,
        *,
        max_batch_size: int,
        batch_max_delay_s: float = 0.0,
        intra_op_threads: int = 1,
        deploy_key: bytes | None = None,
    ):
        self.contracts = contracts
        self.registry = registry
        self.metrics = metrics
        self.log = log
        self.max_batch_size = max_batch_size
        self.batch_max_delay_s = batch_max_delay_s
        self.intra_op_threads = intra_op_threads
        self.check = DeploymentCheck(contracts, registry, deploy_key)
        self.applied: dict[str, int] = dict.fromkeys(contracts, -1)
        """Per model, the alias-history entry the served state is at (-1: none yet)."""
        self.specs = {name: InputSpec(c, max_batch_size) for name, c in contracts.items()}
        self.slots: dict[str, Slot] = {name: Slot() for name in contracts}

    # --- the hot path ------------------------------------------------------------------

    def route(self, name: str, version: str, request_id: str) -> tuple[Served, Role, Served | None]:
        """The version answering a request, its role, and the shadow to run (if any)."""
        slot = self.slots.get(name)
        if slot is None:
            raise not_found(f"model {name!r} is unknown; served models: {sorted(self.slots)}")
        if version:
            pinned = slot.find(version)
            if pinned is None:
                loaded = [s.model.version_str for s in slot.versions()]
                raise not_found(
                    f"model {name!r} version {version!r} is not loaded; loaded: {loaded}"
                )
            return pinned, "pinned", None
        champion = slot.champion
        if champion is None:
            raise ServingError("UNAVAILABLE", f"model {name!r} has no champion loaded yet")
        challenger = slot.challenger
        if challenger is None:
            return champion, "champion", None
        if slot.mode == "canary":
            if in_canary(request_id, slot.canary_percent):
                return challenger, "canary", None
            return champion, "champion", None
        return champion, "champion", challenger

    def label(self, name: str) -> str:
        """``name`` if it is a served model, else a fixed placeholder (metric cardinality)."""
        return name if name in self.slots else "_unknown"

    # --- loading -----------------------------------------------------------------------

    def _load_sync(self, name: str, version: int) -> LoadedModel:
        # Raises TamperedArtifactError for an edited manifest (its digest is recorded at
        # registration) or ONNX bytes that are not what the manifest names.
        manifest, onnx = self.registry.verified(name, version)
        model = LoadedModel(manifest, onnx, self.specs[name], self.intra_op_threads)
        model.warm_up()
        return model

    async def _load(self, name: str, version: int) -> Served | None:
        """Load ``version`` of ``name`` (reusing a loaded one); None when it cannot be."""
        current = self.slots[name].find(str(version))
        if current is not None:
            return current
        try:
            model = await asyncio.to_thread(self._load_sync, name, version)
        except TamperedArtifactError as exc:
            self.metrics.load_failures.labels(name, "tampered").inc()
            self.log.error("model.refused", model=name, model_version=version, error=str(exc))
            return None
        except KeyError as exc:
            self.metrics.load_failures.labels(name, "missing").inc()
            self.log.error("model.missing", model=name, model_version=version, error=str(exc))
            return None
        except Exception as exc:
            self.metrics.load_failures.labels(name, "invalid").inc()
            self.log.error("model.load_failed", model=name, model_version=version, error=repr(exc))
            return None
        batcher = None
        if self.batch_max_delay_s > 0:
            batch_size = self.metrics.batch_size.labels(name)
            delay = self.metrics.queue_delay.labels(name)

            def observe(rows: int, waited: float) -> None:
                batch_size.observe(rows)
                delay.observe(waited)

            batcher = AdaptiveBatcher(model, self.max_batch_size, self.batch_max_delay_s, observe)
        self.log.info(
            "model.loaded", model=name, model_version=version, data_version=model.data_version
        )
        return Served(model, batcher)

    async def _swap(self, name: str, new: Slot) -> None:
        old = self.slots[name]
        self.slots[name] = new
        for served in old.versions():
            self.metrics.model_info.remove(name, served.model.version_str, old.role_of(served))
        for served in new.versions():
            self.metrics.model_info.labels(name, served.model.version_str, new.role_of(served)).set(
                1
            )
        old_champion = old.champion.model.version if old.champion else None
        new_champion = new.champion.model.version if new.champion else None
        if old.champion is not None and old_champion != new_champion:
            self.metrics.swaps.labels(name).inc()
        kept = {id(s) for s in new.versions()}
        for served in old.versions():
            if id(served) not in kept and served.batcher is not None:
                await served.batcher.close()
        self.log.info(
            "model.slot",
            model=name,
            champion=new_champion,
            challenger=new.challenger.model.version if new.challenger else None,
            mode=new.mode,
            canary_percent=new.canary_percent if new.mode == "canary" else None,
        )

    async def load_from_registry(self) -> None:
        """Serve exactly the registry's current state of every contract (champion,
        challenger, its mode and canary share), leaving out versions that may not serve."""
        for name in self.contracts:

            def refused(err: Refused, name: str = name) -> None:
                self._refused(name, "restore", err)

            state = await asyncio.to_thread(self.check.restore, name, refused)
            await self._serve(name, state)

    async def apply(self, event: Deployment) -> bool:
        """Apply one deployment event; False when it was refused, stale or failed (logged)."""
        name = event.model
        try:
            state = await asyncio.to_thread(self.check.check, event)
        except Refused as err:
            self._refused(name, event.action, err, event)
            return False
        if state.seq <= self.applied[name]:
            # Already serving this decision or a later one (a repeat, or an event that
            # was published before the state read at start-up).
            self.metrics.deployments.labels(name, event.action, "ignored").inc()
            self.log.info("deployment.stale", model=name, seq=state.seq, at=self.applied[name])
            return False
        if not await self._serve(name, state):
            self.metrics.deployments.labels(name, event.action, "failed").inc()
            return False
        self.metrics.deployments.labels(name, event.action, "applied").inc()
        return True

    def _refused(
        self, name: str, action: str, err: Refused, event: Deployment | None = None
    ) -> None:
        label = self.label(name)
        self.metrics.deployment_refusals.labels(label, err.reason).inc()
        self.metrics.deployments.labels(label, action, "refused").inc()
        self.log.error(
            "deployment.refused",
            model=name,
            action=action,
            reason=err.reason,
            error=str(err),
            event_id=event.id if event else None,
            actor=event.actor if event else None,
            model_version=event.version if event else None,
        )

    async def _serve(self, name: str, state: AliasState) -> bool:
        """Load the versions of ``state`` and swap them in; False (nothing changed) when
        one cannot be loaded."""
        champion = challenger = None
        if state.champion is not None:
            champion = await self._load(name, state.champion)
            if champion is None:
                return False
        if state.challenger is not None and champion is not None:
            challenger = await self._load(name, state.challenger)
            if challenger is None:
                return False
        mode = state.mode if challenger is not None else None
        percent = state.canary_percent if mode == "canary" and state.canary_percent else 0.0
        await self._swap(name, Slot(champion, challenger, mode, percent))
        self.applied[name] = state.seq
        return True

    async def close(self) -> None:
        """Stop every batcher (answering what they hold)."""
        for slot in self.slots.values():
            for served in slot.versions():
                if served.batcher is not None:
                    await served.batcher.close()
