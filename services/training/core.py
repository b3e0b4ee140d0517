"""The training service's transport-free core: triggers in, runs, registry and events out.

Triggers (``data.validated``, ``retrain.requests``, the schedule) are queued per model;
triggers arriving while a run is waiting or going are coalesced into the next run,
whose policy decision sees all of them. One worker runs one training at a time in a
thread, so the event loop stays free for deployment requests, which are applied to the
registry aliases straight away (training is the registry's only writer).

A model with no champion gets a fast first candidate before the search when its
contract allows it (:mod:`.fast_first`): the run registers, gates and deploys it, then
searches and registers the winner as the next version, both for the same triggers.

A run that fails is written to the registry as a failed run record (error, phase,
attempt), counted, and retried with exponential back-off (:class:`RetryPolicy`); its
reasons ride along with the retry, and a restart resumes the back-off from that record.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from shared import topics
from shared.contract import Contract
from shared.datasets import DatasetCatalog
from shared.events import (
    DatasetValidated,
    DeploymentRequest,
    Event,
    ModelRegistered,
    RetrainRequest,
    utcnow,
)
from shared.registry import ModelManifest, Registry

from . import fast_first
from .cpu import search_process
from .deploy import DeploymentRefused, new_model_request, record_decision
from .metrics import TrainingMetrics
from .policy import Reason, decide, reasons, trigger_key
from .search import RunCancelled
from .trainer import TrainConfig, TrainingFailed, TrainResult, train

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
    retry: list[Reason] = field(default_factory=list)
    """Reasons of a failed run, tried again."""
    attempt: int = 0
    """Failed attempts so far of the run being retried (0: not a retry)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed run is retried: after ``base_s * 2**(attempt-1)`` seconds (at most
    ``max_s``), up to ``attempts`` times; the next trigger after that tries again."""

    base_s: float = 30.0
    max_s: float = 900.0
    attempts: int = 5

    def delay(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (1-based)."""
        return float(min(self.max_s, self.base_s * 2 ** max(0, attempt - 1)))


@dataclass
class _Attempt:
    """What a run had got to, for its failure record."""

    phase: str = "decide"
    dataset_version: str | None = None
    reasons: list[Reason] = field(default_factory=list)


@dataclass(frozen=True)
class RunOutcome:
    """What one run (or decision not to run) came to."""

    model: str
    outcome: str
    """promoted | registered | refused | failed | deferred | skipped"""
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
        retry: the back-off of failed runs.
        clock: the time source (tests pass their own).
        search_process: cross-validate the search's candidates in a worker process
            (:mod:`.cpu`), started with the service; off: in the run's thread.
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
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        search_process: bool = False,
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
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.not_before: dict[str, float] = {}
        """model -> when its next run may start (a failed run's back-off)."""
        self.failing: dict[str, int] = {}
        """model -> failed runs since its last completed one."""
        self._wake = asyncio.Event()
        self._alias_lock = asyncio.Lock()
        self._worker: asyncio.Task[None] | None = None
        self._cancel = threading.Event()
        self._search_process = search_process
        self._pool: asyncio.Future[Executor] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Resume the back-off of runs that failed before a restart; start the worker."""
        self.restore()
        if self._search_process:
            self._start_pool()
        self._worker = self._spawn(self._work(), "training-worker")

    def _start_pool(self) -> None:
        # Started beside the service's other work: a run that needs it before it is up
        # waits for it (about 2 s), nothing else does.
        self._pool = asyncio.ensure_future(
            asyncio.to_thread(search_process, self.config.background_nice)
        )

    async def _executor(self) -> Executor | None:
        """The search's worker process (None when off, or when it could not start)."""
        if self._pool is None:
            return None
        try:
            return await asyncio.shield(self._pool)
        except Exception as exc:
            self.log.error("training.search_process_failed", error=repr(exc))
            self._pool = None
            return None

    def restore(self) -> None:
        """Queue the retry of each model whose last run failed with a retry left."""
        for model in self.contracts:
            self._restore_retry(model)

    def _restore_retry(self, model: str) -> None:
        last = self.registry.last_run(model)
        if last is None or last.get("status") != "failed" or last.get("retry_at") is None:
            return
        self.pending[model] = Pending(
            retry=[Reason(r["kind"], r["text"]) for r in last.get("reasons", [])],
            attempt=int(last.get("attempt", 1)),
        )
        self.not_before[model] = float(last["retry_at"])
        self.failing[model] = int(last.get("attempt", 1))
        self.metrics.consecutive_failures.labels(model).set(self.failing[model])
        self.log.info("training.retry_restored", model=model, retry_at=last["retry_at"])
        self._wake.set()

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
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                (await pool).shutdown(wait=False, cancel_futures=True)

    # --- triggers ----------------------------------------------------------------------

    def submit_validated(self, event: DatasetValidated, ack: Ack) -> bool:
        """Queue a ``data.validated`` event; False (and acked) if no contract names it or
        the store does not hold its dataset version (counted in ``missing``, logged: a
        broker that outlives its store replays such events, and they cannot be trained)."""
        if event.dataset in self.contracts:
            try:
                self.catalog.get(event.dataset, event.dataset_version)
            except KeyError:
                self.metrics.missing.labels(event.dataset, "dataset_version").inc()
                self.log.warning(
                    "trigger.missing_dataset_version",
                    model=event.dataset,
                    dataset_version=event.dataset_version,
                )
                ack()
                return False
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

    def next_ready(self) -> tuple[str | None, float | None]:
        """The first pending model whose back-off is over, else when the next one is."""
        now = self.clock()
        waits = []
        for model in self.pending:
            due = self.not_before.get(model, 0.0)
            if due <= now:
                return model, None
            waits.append(due - now)
        return None, min(waits) if waits else None

    async def _work(self) -> None:
        while True:
            model, wait = self.next_ready()
            if model is not None:
                await self.run(model)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)  # a back-off, not readiness
            self._wake.clear()

    async def run(self, model: str) -> RunOutcome:
        """Take ``model``'s pending triggers and decide, train and publish; then ack them."""
        pending = self.pending.pop(model, Pending())
        self.not_before.pop(model, None)
        attempt = _Attempt()
        try:
            outcome = await self._run(self.contracts[model], pending, attempt)
        except RunCancelled:
            # Stopping: leave the triggers unacknowledged so a restart runs them again.
            self.log.warning("training.cancelled", model=model)
            raise asyncio.CancelledError from None
        except Exception as exc:
            # A run that cannot complete is recorded, counted and retried with back-off;
            # its triggers are acknowledged (the retry carries their reasons) so one
            # poisoned dataset cannot wedge the offsets of the others.
            outcome = self._failed(model, pending, attempt, exc)
        else:
            if outcome.outcome not in ("skipped", "deferred"):
                self.failing.pop(model, None)
                self.metrics.consecutive_failures.labels(model).set(0)
        self.metrics.runs.labels(model, outcome.outcome).inc()
        self.outcomes.append(outcome)
        for ack in pending.acks:
            ack()
        return outcome

    def _failed(
        self, model: str, pending: Pending, attempt: _Attempt, exc: Exception
    ) -> RunOutcome:
        phase = exc.phase if isinstance(exc, TrainingFailed) else attempt.phase
        error = exc.error if isinstance(exc, TrainingFailed) else exc
        number = pending.attempt + 1
        retry = number <= self.retry.attempts
        retry_at = self.clock() + self.retry.delay(number) if retry else None
        why = attempt.reasons or pending.retry
        run_id = f"{utcnow().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        record = {
            "run_id": run_id,
            "status": "failed",
            "model": model,
            "version": None,
            "dataset_version": attempt.dataset_version,
            "phase": phase,
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exception(error, limit=-8),
            "reasons": [{"kind": r.kind, "text": r.text} for r in why],
            "attempt": number,
            "retry_at": retry_at,
            "created": utcnow().isoformat(),
        }
        try:
            self.registry.put_run(model, run_id, record)
        except OSError as err:  # the store itself failing: still logged and counted
            self.log.error("training.failure_unrecorded", model=model, error=repr(err))
        self.log.error(
            "training.failed",
            model=model,
            phase=phase,
            attempt=number,
            retry_at=retry_at,
            error=repr(error),
            run_id=run_id,  # the run record holds the traceback (rendering one with its
        )  # locals, as the console logger does, took seconds)
        self.metrics.failures.labels(model, phase).inc()
        self.failing[model] = self.failing.get(model, 0) + 1
        self.metrics.consecutive_failures.labels(model).set(self.failing[model])
        self.metrics.last_run.labels(model).set(time.time())
        if retry:
            queued = self.pending.setdefault(model, Pending())
            queued.validated[:0] = pending.validated
            queued.requests[:0] = pending.requests
            if queued.schedule_period is None:
                queued.schedule_period = pending.schedule_period
            queued.retry = [*why, *(r for r in queued.retry if r not in why)]
            queued.attempt = number
            self.not_before[model] = retry_at if retry_at is not None else 0.0
            self._wake.set()
        detail = f"{phase}: {record['error']}" + (
            f" (attempt {number}; retry in {self.retry.delay(number):g}s)"
            if retry
            else f" (attempt {number}; no automatic retry left)"
        )
        return RunOutcome(model, "failed", detail)

    async def _run(self, contract: Contract, pending: Pending, attempt: _Attempt) -> RunOutcome:
        model = contract.name
        if pending.validated:
            dataset_version = pending.validated[-1].dataset_version
        else:
            latest = self.catalog.latest(model)
            if latest is None:
                return self._skip(model, "no dataset version yet")
            dataset_version = latest.id
        attempt.dataset_version = dataset_version
        version = self.catalog.get(model, dataset_version)
        manifests = self.registry.versions(model)
        last = manifests[-1] if manifests else None
        why = reasons(
            contract,
            last=last,
            rows=version.rows,
            validated=pending.validated,
            requests=pending.requests,
            schedule_period=pending.schedule_period,
        )
        kinds = {r.kind for r in why}
        why += [r for r in pending.retry if r.kind not in kinds]
        waiting = self._waiting(model, last)
        decision = decide(
            why,
            dataset_version=dataset_version,
            trained_on={m.dataset_version: m.version for m in manifests},
            handled={
                r.kind
                for r in [*why, *waiting]
                if self.registry.has_trigger(model, trigger_key(model, dataset_version, r.kind))
            },
            waiting=waiting,
        )
        for r in decision.defer:
            self.registry.put_trigger(
                model,
                trigger_key(model, dataset_version, f"waiting:{r.kind}"),
                {
                    "kind": r.kind,
                    "text": r.text,
                    "status": "waiting",
                    "dataset_version": dataset_version,
                    "trained_by": decision.trained_by,
                    "created": utcnow().isoformat(),
                },
            )
        fresh = decision.train
        if not fresh and decision.defer:
            kinds_text = ", ".join(r.kind for r in decision.defer)
            detail = (
                f"{kinds_text} on dataset version {dataset_version[:12]}, already trained on by "
                f"v{decision.trained_by}: waiting for new data"
            )
            self.log.info(
                "training.deferred", model=model, detail=detail, dataset_version=dataset_version
            )
            return RunOutcome(model, "deferred", detail)
        if not fresh:
            detail = "already trained for these triggers" if why else "policy: no reason to train"
            return self._skip(model, detail, dataset_version=dataset_version, rows=version.rows)
        attempt.reasons = fresh
        keys = {r.kind: trigger_key(model, dataset_version, r.kind) for r in fresh}
        reason = "; ".join(r.text for r in fresh)
        self.log.info(
            "training.started", model=model, dataset_version=dataset_version, reason=reason
        )
        self.metrics.running.labels(model).set(1)
        try:
            first = None
            has_champion = self.registry.aliases(model)["champion"] is not None
            if fast_first.wanted(contract, has_champion=has_champion, last=last):
                first, result = await self._fast_then_searched(
                    contract, dataset_version, reason, attempt
                )
            else:
                result = await self._train(contract, dataset_version, reason, attempt, "search")
        finally:
            self.metrics.running.labels(model).set(0)
        # Recorded before publishing: a publish that fails is retried without training the
        # same triggers into another identical version.
        attempt.phase = "publish"
        for r in fresh:
            self.registry.put_trigger(
                model,
                keys[r.kind],
                {
                    "kind": r.kind,
                    "dataset_version": dataset_version,
                    "version": result.manifest.version,
                    "fast_first_version": None if first is None else first.manifest.version,
                },
            )
        outcome = await self._publish(contract, result)
        self.metrics.last_run.labels(model).set(time.time())
        return outcome

    async def _fast_then_searched(
        self, contract: Contract, dataset_version: str, reason: str, attempt: _Attempt
    ) -> tuple[TrainResult, TrainResult]:
        """The fast first candidate, registered and published, and the searched model,
        whose search runs beside it from the start (see :class:`fast_first.Handoff`)."""
        handoff = fast_first.Handoff()
        searched = asyncio.create_task(
            self._train(contract, dataset_version, reason, attempt, "search", handoff=handoff)
        )
        try:
            first = await self._train(contract, dataset_version, reason, attempt, "fast_first")
            attempt.phase = "publish"
            await self._publish(contract, first)
        except BaseException:
            # The searched run's thread stops at its next step; its outcome is moot.
            handoff.failed()
            searched.cancel()
            await asyncio.gather(searched, return_exceptions=True)
            raise
        handoff.registered(first.manifest.version)
        attempt.phase = "train"
        return first, await searched

    async def _train(
        self,
        contract: Contract,
        dataset_version: str,
        reason: str,
        attempt: _Attempt,
        candidate: fast_first.Candidate,
        handoff: fast_first.Handoff | None = None,
    ) -> TrainResult:
        """One registered version, trained in a worker thread; phases observed in the
        metrics (a fast candidate's as ``fast_first:<phase>``)."""
        model = contract.name
        prefix = "fast_first:" if candidate == fast_first.FAST_FIRST else ""
        attempt.phase = "train"

        def observe(phase: str, seconds: float) -> None:
            self.metrics.phase_seconds.labels(model, prefix + phase).observe(seconds)

        executor = await self._executor() if candidate == fast_first.SEARCH else None
        try:
            return await asyncio.to_thread(
                train,
                contract,
                self.registry,
                self.catalog,
                dataset_version=dataset_version,
                reason=reason,
                config=self.config,
                threads=self.threads,
                cancel=self._cancel,
                on_phase=observe,
                candidate=candidate,
                handoff=handoff,
                executor=executor,
            )
        except TrainingFailed as failed:
            if isinstance(failed.error, BrokenProcessPool):
                # The worker process died (killed, out of memory): a new one for the retry.
                self.log.error("training.search_process_lost", error=repr(failed.error))
                self._start_pool()
            raise

    def _waiting(self, model: str, last: ModelManifest | None) -> list[Reason]:
        """Drift/quality reasons deferred on the newest model's data: still waiting."""
        if last is None:
            return []
        out: list[Reason] = []
        for record in self.registry.triggers(model):
            if record.get("status") == "waiting" and record["dataset_version"] == (
                last.dataset_version
            ):
                text = (
                    f"{record['text']} (waiting since dataset version {last.dataset_version[:12]})"
                )
                out.append(Reason(str(record["kind"]), text))
        unique: dict[str, Reason] = {}
        for r in out:
            unique.setdefault(r.kind, r)
        return list(unique.values())

    def _skip(self, model: str, detail: str, **fields: Any) -> RunOutcome:
        """A decision not to run (counted as ``skipped``)."""
        self.log.info("training.skipped", model=model, detail=detail, **fields)
        return RunOutcome(model, "skipped", detail)

    async def _publish(self, contract: Contract, result: TrainResult) -> RunOutcome:
        manifest = result.manifest
        model, version = manifest.model, manifest.version
        action = (manifest.model_extra or {}).get("deployment")
        deployment = None
        async with self._alias_lock:
            if action is not None:
                reason = f"new model: {manifest.reason}"
                request = new_model_request(contract, version, action, reason)
                deployment = record_decision(self.registry, contract, request)
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
                promoted=deployment is not None,
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

    async def apply_request(self, request: DeploymentRequest) -> str:
        """Record a deployment request in the registry and publish the deployment it
        decides: ``applied``, ``ignored`` (nothing moved) or ``refused`` (logged)."""
        contract = self.contracts.get(request.model)
        fields = {
            "model": request.model,
            "action": request.action,
            "version": request.version,
            "actor": request.actor,
            "request_id": request.id,
        }
        if contract is None:
            outcome = "refused"
            self.log.warning("deployment.refused", reason="unknown_model", **fields)
        else:
            async with self._alias_lock:
                try:
                    deployment = record_decision(self.registry, contract, request)
                except DeploymentRefused as err:
                    outcome = "refused"
                    self.log.warning(
                        "deployment.refused", reason=err.reason, error=str(err), **fields
                    )
                else:
                    recorded = request.action == "approve" or deployment is not None
                    outcome = "applied" if recorded else "ignored"
                    if deployment is not None:
                        await self.publisher.publish(
                            topics.MODELS_DEPLOYMENTS, request.model, deployment
                        )
                    self.log.info(
                        "deployment.applied" if recorded else "deployment.no_change",
                        history=deployment.history if deployment else None,
                        **fields,
                    )
        self.metrics.deployments.labels(request.model, request.action, outcome).inc()
        return outcome
