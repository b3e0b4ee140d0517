"""The training service's transport-free core: triggers in, runs, registry and events out.

Triggers (``data.validated``, ``retrain.requests``, the schedule) are queued per model;
triggers arriving while a run is waiting or going are coalesced into the next run,
whose policy decision sees all of them. One worker runs one training at a time in a
thread, so the event loop stays free for deployment requests, which are applied to the
registry aliases straight away (training is the registry's only writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from shared import topics
from shared.contract import Contract
from shared.datasets import DatasetCatalog
from shared.events import DatasetValidated, Deployment, Event, ModelRegistered, RetrainRequest
from shared.registry import Registry

from .deploy import ACTOR, DeploymentRefused, apply, new_model_deployment
from .metrics import TrainingMetrics
from .policy import reasons, trigger_key
from .search import RunCancelled
from .trainer import TrainConfig, TrainResult, train

Ack = Callable[[], None]
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class Publisher(Protocol):
    """Where the core's events go (Kafka in the service, a list in unit tests)."""

    async def publish(self, topic: str, key: str, event: Event) -> None: ...


@dataclass
class Pending:
    """Triggers of one model waiting for the next run."""

    validated: list[DatasetValidated] = field(default_factory=list)
    requests: list[RetrainRequest] = field(default_factory=list)
    schedule_period: int | None = None
    acks: list[Ack] = field(default_factory=list)


@dataclass(frozen=True)
class RunOutcome:
    """What one run (or decision not to run) came to."""

    model: str
    outcome: str
    """promoted | registered | refused | failed | skipped"""
    detail: str
    version: int | None = None


class TrainingCore:
    """Queues triggers, runs training, moves aliases, publishes events.

    Args:
        contracts: contracts by model name.
        registry: the model registry (written here only).
        catalog: the dataset catalog (read).
        publisher: where events go.
        metrics: the service's metrics.
        config: the service-side training knobs.
        log: the service logger.
        threads: OpenMP/BLAS threads per run.
        spawn: starts the worker task (the service passes ``Runtime.spawn`` so a crashed
            worker stops the service instead of dying unnoticed).
    """

    def __init__(
        self,
        contracts: dict[str, Contract],
        registry: Registry,
        catalog: DatasetCatalog,
        publisher: Publisher,
        metrics: TrainingMetrics,
        config: TrainConfig,
        log: Any | None = None,
        threads: int | None = 1,
        spawn: Spawn | None = None,
    ):
        self.contracts = contracts
        self.registry = registry
        self.catalog = catalog
        self.publisher = publisher
        self.metrics = metrics
        self.config = config
        self.threads = threads
        self._spawn: Spawn = spawn or (lambda coro, name: asyncio.create_task(coro, name=name))
        self.log = log or structlog.get_logger("training")
        self.pending: dict[str, Pending] = {}
        self.outcomes: list[RunOutcome] = []
        self._wake = asyncio.Event()
        self._alias_lock = asyncio.Lock()
        self._worker: asyncio.Task[None] | None = None
        self._cancel = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker that runs queued trainings."""
        self._worker = self._spawn(self._work(), "training-worker")

    async def stop(self) -> None:
        """Stop the worker; a run in progress stops at its next step, unregistered.

        Its triggers are not acknowledged, so their offsets stay uncommitted and the
        run happens again after a restart.
        """
        self._cancel.set()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    # --- triggers ----------------------------------------------------------------------

    def submit_validated(self, event: DatasetValidated, ack: Ack) -> bool:
        """Queue a ``data.validated`` event; False (and acked) if no contract names it."""
        return self._queue(event.dataset, ack, lambda p: p.validated.append(event))

    def submit_request(self, event: RetrainRequest, ack: Ack) -> bool:
        """Queue a ``retrain.requests`` event; False (and acked) if no contract names it."""
        return self._queue(event.model, ack, lambda p: p.requests.append(event))

    def submit_schedule(self, model: str, period: int) -> bool:
        """Queue a scheduled run for ``model`` (period = ``now // schedule_seconds``)."""

        def add(p: Pending) -> None:
            p.schedule_period = period

        return self._queue(model, lambda: None, add)

    def _queue(self, model: str, ack: Ack, add: Callable[[Pending], None]) -> bool:
        if model not in self.contracts:
            self.log.warning("trigger.unknown_model", model=model)
            ack()
            return False
        if model in self.pending:
            self.metrics.coalesced.labels(model).inc()
        pending = self.pending.setdefault(model, Pending())
        add(pending)
        pending.acks.append(ack)
        self._wake.set()
        return True

    def due_schedules(self, now: float) -> list[tuple[str, int]]:
        """(model, period) for each contract whose schedule says a retrain is due."""
        due = []
        for name, contract in self.contracts.items():
            every = contract.training.schedule_seconds
            numbers = self.registry.version_numbers(name)
            if every is None or not numbers:
                continue
            last = self.registry.get(name, numbers[-1])
            if now - last.created.timestamp() >= every:
                due.append((name, int(now // every)))
        return due

    # --- runs --------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                model = next(iter(self.pending))
                await self.run(model)

    async def run(self, model: str) -> RunOutcome:
        """Take ``model``'s pending triggers and decide, train and publish; then ack them."""
        pending = self.pending.pop(model, Pending())
        try:
            outcome = await self._run(self.contracts[model], pending)
        except RunCancelled:
            # Stopping: leave the triggers unacknowledged so a restart runs them again.
            self.log.warning("training.cancelled", model=model)
            raise asyncio.CancelledError from None
        except Exception as exc:
            # A run that cannot complete is reported and counted; its triggers are
            # acknowledged so one poisoned dataset cannot wedge the service.
            self.log.error("training.failed", model=model, error=repr(exc), exc_info=exc)
            outcome = RunOutcome(model, "failed", repr(exc))
            self.metrics.last_run.labels(model).set(time.time())
        self.metrics.runs.labels(model, outcome.outcome).inc()
        self.outcomes.append(outcome)
        for ack in pending.acks:
            ack()
        return outcome

    async def _run(self, contract: Contract, pending: Pending) -> RunOutcome:
        model = contract.name
        if pending.validated:
            dataset_version = pending.validated[-1].dataset_version
        else:
            latest = self.catalog.latest(model)
            if latest is None:
                return self._skip(model, "no dataset version yet")
            dataset_version = latest.id
        version = self.catalog.get(model, dataset_version)
        numbers = self.registry.version_numbers(model)
        last = self.registry.get(model, numbers[-1]) if numbers else None
        why = reasons(
            contract,
            last=last,
            rows=version.rows,
            validated=pending.validated,
            requests=pending.requests,
            schedule_period=pending.schedule_period,
        )
        keys = {r.kind: trigger_key(model, dataset_version, r.kind) for r in why}
        fresh = [r for r in why if not self.registry.has_trigger(model, keys[r.kind])]
        if not fresh:
            detail = "already trained for these triggers" if why else "policy: no reason to train"
            return self._skip(model, detail, dataset_version=dataset_version, rows=version.rows)
        reason = "; ".join(r.text for r in fresh)
        self.log.info(
            "training.started", model=model, dataset_version=dataset_version, reason=reason
        )
        self.metrics.running.labels(model).set(1)
        try:
            result = await asyncio.to_thread(
                train,
                contract,
                self.registry,
                self.catalog,
                dataset_version=dataset_version,
                reason=reason,
                config=self.config,
                threads=self.threads,
                cancel=self._cancel,
                on_phase=lambda phase, s: self.metrics.phase_seconds.labels(model, phase).observe(
                    s
                ),
            )
        finally:
            self.metrics.running.labels(model).set(0)
        outcome = await self._publish(contract, result)
        for r in fresh:
            self.registry.put_trigger(
                model,
                keys[r.kind],
                {
                    "kind": r.kind,
                    "dataset_version": dataset_version,
                    "version": result.manifest.version,
                },
            )
        self.metrics.last_run.labels(model).set(time.time())
        return outcome

    def _skip(self, model: str, detail: str, **fields: Any) -> RunOutcome:
        self.log.info("training.skipped", model=model, detail=detail, **fields)
        return RunOutcome(model, "skipped", detail)

    async def _publish(self, contract: Contract, result: TrainResult) -> RunOutcome:
        manifest = result.manifest
        model, version = manifest.model, manifest.version
        action = (manifest.model_extra or {}).get("deployment")
        deployment = None
        async with self._alias_lock:
            if action is not None:
                deployment = new_model_deployment(
                    contract, self.registry, version, action, f"new model: {manifest.reason}"
                )
                apply(self.registry, deployment)
        metric = contract.promotion.primary_metric
        if metric in manifest.metrics:
            self.metrics.primary_metric.labels(model, str(version)).set(manifest.metrics[metric])
        await self.publisher.publish(
            topics.MODELS_REGISTERED,
            model,
            ModelRegistered(
                model=model,
                version=version,
                dataset_version=manifest.dataset_version,
                manifest_uri=self.registry.manifest_uri(model, version),
                metrics=manifest.metrics,
                gates={name: gate.passed for name, gate in manifest.gates.items()},
                promoted=manifest.promoted,
                reason=manifest.reason,
            ),
        )
        if deployment is not None:
            await self.publisher.publish(topics.MODELS_DEPLOYMENTS, model, deployment)
        if not result.passed:
            failed = [n for n, g in manifest.gates.items() if not g.passed]
            outcome = RunOutcome(model, "refused", "failed gates: " + ", ".join(failed), version)
        elif action is None:
            outcome = RunOutcome(model, "registered", "waiting for a manual promotion", version)
        else:
            outcome = RunOutcome(model, "promoted", f"deployed: {action}", version)
        self.log.info(
            "training.finished",
            model=model,
            version=version,
            outcome=outcome.outcome,
            detail=outcome.detail,
            metrics=manifest.metrics,
            phases=result.phases,
        )
        return outcome

    # --- deployments from the CLI and monitoring --------------------------------------

    async def apply_deployment(self, event: Deployment) -> str:
        """Apply a deployment request to the aliases: ``applied``, ``ignored`` or ``refused``."""
        if event.actor == ACTOR:
            return "ignored"  # training's own event: the aliases already moved
        if event.model not in self.contracts:
            outcome = "refused"
            self.log.warning("deployment.refused", model=event.model, error="unknown model")
        else:
            async with self._alias_lock:
                try:
                    changes = apply(self.registry, event)
                except DeploymentRefused as err:
                    outcome = "refused"
                    self.log.warning(
                        "deployment.refused",
                        model=event.model,
                        action=event.action,
                        version=event.version,
                        actor=event.actor,
                        error=str(err),
                    )
                else:
                    outcome = "applied"
                    self.log.info(
                        "deployment.applied",
                        model=event.model,
                        action=event.action,
                        version=event.version,
                        actor=event.actor,
                        changes=len(changes),
                    )
        self.metrics.deployments.labels(event.model, event.action, outcome).inc()
        return outcome
