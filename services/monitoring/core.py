"""The transport-free core: events in, metrics and action events out.

:class:`MonitoringCore` keeps, per model, the deployment state (champion, challenger)
and per model version a drift window (:mod:`.window_drift`) and a quality window
(:mod:`.quality`); the label join (:mod:`.join`) connects feedback to the served row.
Decisions go through :class:`.actions.Trigger` (hysteresis + cool-down) and come back
as :class:`Outgoing` events for the Kafka adapter to publish.

Every row a window counts is tagged with the stream partition it came from (the
partition its prediction id routes to, ``join.partition_of``), so the windows are the
union of per-partition shares that :mod:`.state` snapshots with the join and restores on
assignment (:meth:`MonitoringCore.refresh` then republishes the restored figures), and
:meth:`MonitoringCore.drop_partitions` forgets when another replica takes over.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared import topics
from shared.contract import Contract
from shared.datasets import DatasetCatalog
from shared.deployment_check import DeploymentCheck, Refused
from shared.events import (
    BatchQuarantined,
    DatasetValidated,
    DeadLetter,
    Deployment,
    DeploymentRequest,
    Event,
    Feedback,
    ModelRegistered,
    Prediction,
    RetrainRequest,
    utcnow,
)
from shared.registry import Registry

from .actions import Trigger
from .join import EarlyLabel, LabelJoin, Pending
from .metrics import MonitoringMetrics
from .predlog import PredictionLog
from .quality import Labelled, QualityWindow, largest_gaps
from .window_drift import VersionDrift, WindowReport, prediction_value
from .windows import PartitionedWindow, Stamps

ACTOR = "monitoring"
UNKNOWN = "unknown"
ACTIONS = ("retrain", "rollback", "promote")
LOWER_IS_BETTER = frozenset({"mae", "rmse", "log_loss"})
IN_LABEL_UNITS = frozenset({"mae", "rmse"})
"""Metrics in the regression label's units: a margin on them is a share of the reference."""
DECIDING = ("psi", "wasserstein")
"""The drift scores monitoring's verdict is made of (the evidence quotes them)."""


@dataclass(frozen=True)
class Outgoing:
    """An event the core wants published."""

    topic: str
    key: str
    event: Event


@dataclass(frozen=True)
class Limits:
    """Service-level knobs of the core (see :class:`.settings.MonitoringSettings`)."""

    eval_every_labels: int = 100
    max_versions: int = 4
    window_rows: int | None = None
    cooldown_s: float | None = None


@dataclass
class VersionState:
    """What monitoring tracks for one model version."""

    version: int
    drift: VersionDrift | None
    quality: QualityWindow
    agreement: PartitionedWindow[bool]
    """Shadow rows: did this (shadow) version's label equal the champion's?"""
    last_primary: float | None = None
    windows: int = 0


@dataclass
class ModelState:
    """Deployment state and action triggers of one model."""

    contract: Contract
    drift_trigger: Trigger
    quality_trigger: Trigger
    rollback_trigger: Trigger
    promote_trigger: Trigger
    champion: int | None = None
    challenger: int | None = None
    challenger_mode: str | None = None
    previous_champion: int | None = None
    baseline: float | None = None
    """The previous champion's live primary metric when it was replaced."""
    versions: OrderedDict[int, VersionState] = field(default_factory=OrderedDict)
    recent_windows: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5))

    def triggers(self) -> dict[str, Trigger]:
        """The model's action triggers by name (the names snapshots use)."""
        return {
            "drift": self.drift_trigger,
            "quality": self.quality_trigger,
            "rollback": self.rollback_trigger,
            "promote": self.promote_trigger,
        }


def primary_metric(contract: Contract, metrics: Mapping[str, float]) -> tuple[str, float] | None:
    """The contract's primary metric from ``metrics``, falling back to accuracy / rmse."""
    name = contract.promotion.primary_metric
    if name in metrics:
        return name, metrics[name]
    fallback = "accuracy" if contract.task == "classification" else "rmse"
    return (fallback, metrics[fallback]) if fallback in metrics else None


def worse_by(name: str, candidate: float, reference: float) -> float:
    """How much worse ``candidate`` is than ``reference`` on metric ``name`` (negative:
    better); for a metric in label units (MAE, RMSE) as a share of ``reference``, so one
    ``rollback_margin`` fits labels of any scale."""
    worse = candidate - reference if name in LOWER_IS_BETTER else reference - candidate
    return worse / max(abs(reference), 1e-12) if name in IN_LABEL_UNITS else worse


def score_of(outputs: Mapping[str, Any]) -> float | None:
    """Positive-class probability (the last class) of a classifier's outputs, else None."""
    probs = outputs.get("probabilities")
    if isinstance(probs, list | tuple) and probs:
        try:
            return float(probs[-1])
        except (TypeError, ValueError):
            return None
    return None


def predicted_of(outputs: Mapping[str, Any]) -> Any:
    """The predicted class (classifier) or value (regressor)."""
    return outputs["label"] if "label" in outputs else outputs.get("prediction")


class MonitoringCore:
    """Everything monitoring computes and decides, without Kafka.

    Args:
        contracts: data contracts by model name (the models monitored).
        registry: the model registry (manifests, aliases).
        catalog: the dataset catalog (reference profiles).
        metrics: the service's metrics.
        join: the delayed-label join.
        log: the prediction log.
        logger: structured logger.
        limits: service-level knobs.
        clock: monotonic seconds (cool-downs).
        check: verifies deployment events against the registry as serving does (None:
            followed unverified, for unit tests); a refused one is counted and ignored, so
            monitoring judges the versions serving serves, not what a forged event claims.
    """

    def __init__(
        self,
        contracts: Mapping[str, Contract],
        registry: Registry,
        catalog: DatasetCatalog,
        metrics: MonitoringMetrics,
        join: LabelJoin,
        log: PredictionLog,
        logger: Any,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
        check: DeploymentCheck | None = None,
    ):
        self.contracts = dict(contracts)
        self.check = check
        self.registry = registry
        self.catalog = catalog
        self.metrics = metrics
        self.join = join
        self.predlog = log
        self.logger = logger
        self.limits = limits or Limits()
        self.clock = clock
        self.stamps = Stamps()
        """Orders window rows across partitions and restarts (:mod:`.windows`)."""
        self.models: dict[str, ModelState] = {}
        for name in self.contracts:
            self.model(name)

    # --- state ----------------------------------------------------------------------

    def _window_rows(self, contract: Contract) -> int:
        return self.limits.window_rows or contract.monitoring.window_rows

    def model(self, name: str) -> ModelState | None:
        """The state of a monitored model (None when no contract names it)."""
        if name in self.models:
            return self.models[name]
        contract = self.contracts.get(name)
        if contract is None:
            return None
        mon = contract.monitoring
        cooldown = self.limits.cooldown_s if self.limits.cooldown_s is not None else mon.cooldown_s

        def trigger() -> Trigger:
            return Trigger(mon.consecutive_windows, cooldown)

        state = ModelState(contract, trigger(), trigger(), trigger(), trigger())
        self.models[name] = state
        # Series exist at 0 from the start, so increase() sees the first action and label.
        for action in ACTIONS:
            self.metrics.actions.labels(name, action)
        for outcome in ("joined", "unmatched_evicted"):
            self.metrics.labels.labels(name, outcome)
        for counter in (self.metrics.dlq, self.metrics.quarantined, self.metrics.dataset_versions):
            counter.labels(name)
        return state

    def load_aliases(self) -> None:
        """Initialise champion/challenger of every monitored model from the registry."""
        for name in self.contracts:
            if not self.registry.version_numbers(name):
                continue
            state = self.model(name)
            assert state is not None
            aliases = self.registry.aliases(name)
            state.champion = aliases["champion"]
            state.challenger = aliases["challenger"]
            if state.challenger is not None:
                mode = self.registry.alias_detail(name, "challenger").get("mode")
                state.challenger_mode = str(mode) if mode else None

    def version_state(self, model: str, version: int) -> VersionState | None:
        """The tracked state of one model version, created when new (None: no contract
        names the model)."""
        state = self.model(model)
        return None if state is None else self._version(state, version)

    def _version(self, state: ModelState, version: int) -> VersionState:
        if version in state.versions:
            return state.versions[version]
        contract = state.contract
        size = self._window_rows(contract)
        positive = contract.label.classes[-1] if contract.label.classes else None
        vs = VersionState(
            version=version,
            drift=self._drift_for(contract, version),
            quality=QualityWindow(
                size,
                contract.task,
                positive,
                classes=contract.label.classes or (),
                stamps=self.stamps,
            ),
            agreement=PartitionedWindow(size),
        )
        state.versions[version] = vs
        self._evict_versions(state)
        return vs

    def _drift_for(self, contract: Contract, version: int) -> VersionDrift | None:
        try:
            manifest = self.registry.get(contract.name, version)
            dataset = self.catalog.get(contract.name, manifest.dataset_version)
            profile = self.catalog.profile(dataset)
        except (KeyError, OSError, ValueError) as err:
            self.logger.warning(
                "drift.no_reference", model=contract.name, version=version, error=str(err)
            )
            self.metrics.rejected.labels("predictions", "no_reference").inc()
            return None
        if profile is None:
            self.logger.warning("drift.no_profile", model=contract.name, version=version)
            self.metrics.rejected.labels("predictions", "no_reference").inc()
            return None
        policy = contract.monitoring
        return VersionDrift(
            contract,
            profile,
            self._window_rows(contract),
            policy.drift_psi_threshold,
            policy.drift_wasserstein_threshold,
            stamps=self.stamps,
        )

    def _evict_versions(self, state: ModelState) -> None:
        keep = {state.champion, state.challenger, state.previous_champion}
        while len(state.versions) > self.limits.max_versions:
            victim = next((v for v in state.versions if v not in keep), None)
            if victim is None:
                return
            del state.versions[victim]
            self.metrics.forget_version(state.contract.name, str(victim))

    # --- predictions and feedback -----------------------------------------------------

    def on_predictions(self, predictions: Sequence[Prediction]) -> list[Outgoing]:
        """Count served rows: drift windows, the label join, the prediction log."""
        out: list[Outgoing] = []
        by_version: dict[tuple[str, int, str, int], list[Prediction]] = {}
        now = self.clock()
        for p in predictions:
            state = self.model(p.model)
            if state is None:
                self.metrics.rejected.labels(topics.PREDICTIONS, "unknown_model").inc()
                self.logger.warning("prediction.unknown_model", model=p.model, id=p.id)
                continue
            self.metrics.predictions.labels(p.model, p.role).inc()
            self.predlog.add_prediction(p)
            if p.role == "champion" and state.champion is None:
                state.champion = p.model_version
            partition = self.join.partition_of(p.id)
            by_version.setdefault((p.model, p.model_version, p.role, partition), []).append(p)
            out.extend(self._remember(state, p, partition, now))
        for (model, version, role, partition), rows in by_version.items():
            state = self.models[model]
            vs = self._version(state, version)
            if vs.drift is None:
                continue
            values = [prediction_value(state.contract, r.outputs) for r in rows]
            reports = vs.drift.add([r.inputs for r in rows], values, partition)
            for report in reports:
                out.extend(self._on_window(state, vs, role, report))
        self.metrics.pending_labels.set(len(self.join))
        self.metrics.early_feedback.set(self.join.early)
        return out

    def _remember(
        self, state: ModelState, p: Prediction, partition: int, now: float
    ) -> list[Outgoing]:
        shadow = p.shadow or {}
        shadow_outputs = shadow.get("outputs") if isinstance(shadow, dict) else None
        shadow_version = shadow.get("model_version") if shadow_outputs is not None else None
        pending = Pending(
            model=p.model,
            version=p.model_version,
            role=p.role,
            predicted=predicted_of(p.outputs),
            score=score_of(p.outputs),
            groups={g: str(p.inputs.get(g)) for g in state.contract.groups},
            shadow_version=int(shadow_version) if shadow_version is not None else None,
            shadow_predicted=predicted_of(shadow_outputs) if shadow_outputs else None,
            shadow_score=score_of(shadow_outputs) if shadow_outputs else None,
            at=now,
        )
        if pending.shadow_version is not None:
            svs = self._version(state, pending.shadow_version)
            agrees = str(pending.shadow_predicted) == str(pending.predicted)
            svs.agreement.append(agrees, partition, self.stamps())
            self.metrics.agreement.labels(
                p.model, str(p.model_version), str(pending.shadow_version)
            ).set(sum(svs.agreement) / len(svs.agreement))
        early = self.join.take_early(p.id)
        if early is not None:
            # Its feedback was consumed first (another topic): join it now.
            fb = Feedback(prediction_id=p.id, label=early.label)
            return self._joined(pending, fb, utcnow().isoformat(), partition)
        for evicted in self.join.add(p.id, pending):
            self.metrics.labels.labels(evicted.model, "unmatched_evicted").inc()
        return []

    def on_feedback(self, feedback: Sequence[Feedback]) -> list[Outgoing]:
        """Join labels to their predictions and re-evaluate live quality."""
        out: list[Outgoing] = []
        received = utcnow().isoformat()
        now = self.clock()
        for evicted in self.join.expire(now):
            self.metrics.labels.labels(evicted.model, "unmatched_evicted").inc()
        self._late(self.join.expire_early(now), received)
        for fb in feedback:
            pending = self.join.match(fb.prediction_id)
            if pending is None and self.join.was_joined(fb.prediction_id):
                # A second copy (the router forwards at least once): joined already.
                self.metrics.labels.labels(UNKNOWN, "duplicate").inc()
                continue
            if pending is None:
                self._late(self.join.hold(EarlyLabel(fb.prediction_id, fb.label, now)), received)
                continue
            out.extend(
                self._joined(pending, fb, received, self.join.partition_of(fb.prediction_id))
            )
        self.metrics.pending_labels.set(len(self.join))
        self.metrics.early_feedback.set(self.join.early)
        return out

    def _late(self, labels: Sequence[EarlyLabel], received: str) -> None:
        for label in labels:
            self.metrics.labels.labels(UNKNOWN, "late").inc()
            fb = Feedback(prediction_id=label.prediction_id, label=label.label)
            self.predlog.add_feedback(fb, None, None, received)

    def _joined(
        self, pending: Pending, fb: Feedback, received: str, partition: int
    ) -> list[Outgoing]:
        out: list[Outgoing] = []
        self.metrics.labels.labels(pending.model, "joined").inc()
        self.predlog.add_feedback(fb, pending.model, pending.version, received)
        state = self.models[pending.model]
        vs = self._version(state, pending.version)
        vs.quality.add(
            Labelled(fb.label, pending.predicted, pending.score, pending.groups), partition
        )
        touched = [vs]
        if pending.shadow_version is not None:
            svs = self._version(state, pending.shadow_version)
            svs.quality.add(
                Labelled(fb.label, pending.shadow_predicted, pending.shadow_score, pending.groups),
                partition,
            )
            touched.append(svs)
        for t in touched:
            if t.quality.since_eval >= self.limits.eval_every_labels:
                out.extend(self._evaluate(state, t))
        return out

    # --- drift ------------------------------------------------------------------------

    def _on_window(
        self, state: ModelState, vs: VersionState, role: str, report: WindowReport
    ) -> list[Outgoing]:
        model, version = state.contract.name, str(vs.version)
        m = self.metrics
        vs.windows += 1
        m.version_series(m.windows, model, version).inc()
        for feature, scores in report.features.items():
            for stat, value in scores.items():
                m.version_series(m.drift_score, model, version, feature, stat).set(value)
        if report.prediction_drift is not None:
            m.version_series(m.prediction_drift, model, version).set(report.prediction_drift)
        self.logger.info(
            "drift.window",
            model=model,
            version=vs.version,
            role=role,
            rows=report.rows,
            drifted=report.drifted,
            prediction_drift=report.prediction_drift,
        )
        if role != "champion" or (state.champion is not None and vs.version != state.champion):
            return []
        evidence = {
            "window": vs.windows,
            "rows": report.rows,
            "drifted": {
                f: {k: round(v, 4) for k, v in report.features[f].items() if k in DECIDING}
                for f in report.drifted
            },
        }
        state.recent_windows.append(evidence)
        if not state.drift_trigger.observe(bool(report.drifted), self.clock()):
            return []
        windows = list(state.recent_windows)[-state.contract.monitoring.consecutive_windows :]
        drifted = sorted({f for w in windows for f in w["drifted"]})
        return [
            self._retrain(
                state,
                reason=f"drift on {', '.join(drifted)}",
                evidence={
                    "trigger": "drift",
                    "model_version": vs.version,
                    "data_version": self.registry.get(model, vs.version).dataset_version,
                    "psi_threshold": state.contract.monitoring.drift_psi_threshold,
                    "wasserstein_threshold": (
                        state.contract.monitoring.drift_wasserstein_threshold
                    ),
                    "windows": windows,
                    "prediction_drift": report.prediction_drift,
                    "scores": report.features,
                },
            )
        ]

    # --- quality and deployment decisions --------------------------------------------

    def _publish(self, state: ModelState, vs: VersionState) -> dict[str, float]:
        """Set a version's live quality gauges from its window; its metrics."""
        contract = state.contract
        model, version = contract.name, str(vs.version)
        m = self.metrics
        values = vs.quality.metrics()
        for name, value in values.items():
            m.version_series(m.live_metric, model, version, name).set(value)
        m.version_series(m.live_metric, model, version, "labelled_rows").set(len(vs.quality))
        for attribute in contract.groups:
            per_group = vs.quality.group_metrics(attribute)
            for group, rates in per_group.items():
                for rate, value in rates.items():
                    m.version_series(m.group_metric, model, version, group, rate).set(value)
            for rate, gap in largest_gaps(per_group).items():
                m.version_series(m.fairness_gap, model, version, attribute, rate).set(gap)
        primary = primary_metric(contract, values)
        if primary is not None:
            vs.last_primary = primary[1]
        return values

    def refresh(self) -> None:
        """Republish every tracked version's figures (after windows were restored or
        dropped), deciding nothing: decisions stay on the label schedule, so a restart
        makes no extra evaluation a run without it would not have made."""
        for state in self.models.values():
            for vs in state.versions.values():
                if len(vs.quality):
                    self._publish(state, vs)

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget every window share and join entry of ``partitions`` (another replica's)."""
        self.join.drop(partitions)
        for state in self.models.values():
            for vs in state.versions.values():
                vs.quality.drop(partitions)
                vs.agreement.drop(partitions)
                if vs.drift is not None:
                    vs.drift.drop(partitions)
        self.refresh()

    def _evaluate(self, state: ModelState, vs: VersionState) -> list[Outgoing]:
        contract = state.contract
        vs.quality.since_eval = 0
        values = self._publish(state, vs)
        primary = primary_metric(contract, values)
        if primary is None:
            return []
        enough = len(vs.quality) >= contract.monitoring.min_labelled_rows
        if not enough:
            return []
        out: list[Outgoing] = []
        if vs.version == state.champion:
            out.extend(self._check_quality(state, vs, primary))
            out.extend(self._check_new_champion(state, vs, primary))
        elif vs.version == state.challenger:
            out.extend(self._check_challenger(state, vs, primary))
        return out

    def _check_quality(
        self, state: ModelState, vs: VersionState, primary: tuple[str, float]
    ) -> list[Outgoing]:
        floor = state.contract.monitoring.min_quality
        if floor is None:
            return []
        name, value = primary
        below = value > floor if name in LOWER_IS_BETTER else value < floor
        if not state.quality_trigger.observe(below, self.clock()):
            return []
        return [
            self._retrain(
                state,
                reason=f"live {name} {value:.4f} beyond the floor {floor}",
                evidence={
                    "trigger": "quality",
                    "model_version": vs.version,
                    "metric": name,
                    "value": value,
                    "min_quality": floor,
                    "labelled_rows": len(vs.quality),
                },
            )
        ]

    def _check_challenger(
        self, state: ModelState, vs: VersionState, primary: tuple[str, float]
    ) -> list[Outgoing]:
        champion = state.versions.get(state.champion) if state.champion is not None else None
        if champion is None or len(champion.quality) < state.contract.monitoring.min_labelled_rows:
            return []
        champ_values = champion.quality.metrics()
        champ_primary = champ_values.get(primary[0])
        if champ_primary is None:
            return []
        name, value = primary
        m = self.metrics
        m.metric_difference.labels(state.contract.name, str(champion.version), str(vs.version)).set(
            value - champ_primary
        )
        if state.challenger_mode != "canary":
            return []  # shadows are compared, not acted on: they never answered anyone
        worse = worse_by(name, value, champ_primary) > state.contract.monitoring.rollback_margin
        now = self.clock()
        evidence = {
            "metric": name,
            "champion": champion.version,
            "champion_value": champ_primary,
            "champion_rows": len(champion.quality),
            "challenger": vs.version,
            "challenger_value": value,
            "challenger_rows": len(vs.quality),
            "rollback_margin": state.contract.monitoring.rollback_margin,
        }
        if state.rollback_trigger.observe(worse, now):
            return [
                self._deploy(
                    state,
                    "rollback",
                    champion.version,
                    f"canary v{vs.version} {name} {value:.4f} is worse than champion "
                    f"v{champion.version} {champ_primary:.4f} beyond the margin",
                    evidence,
                )
            ]
        if state.promote_trigger.observe(not worse, now):
            return [
                self._deploy(
                    state,
                    "promote",
                    vs.version,
                    f"canary v{vs.version} {name} {value:.4f} is no worse than champion "
                    f"v{champion.version} {champ_primary:.4f}",
                    evidence,
                )
            ]
        return []

    def _check_new_champion(
        self, state: ModelState, vs: VersionState, primary: tuple[str, float]
    ) -> list[Outgoing]:
        previous, baseline = state.previous_champion, state.baseline
        if previous is None or baseline is None:
            return []
        name, value = primary
        worse = worse_by(name, value, baseline) > state.contract.monitoring.rollback_margin
        if not state.rollback_trigger.observe(worse, self.clock()):
            return []
        return [
            self._deploy(
                state,
                "rollback",
                previous,
                f"new champion v{vs.version} {name} {value:.4f} is worse than the previous "
                f"champion v{previous} {baseline:.4f} beyond the margin",
                {
                    "metric": name,
                    "champion": vs.version,
                    "champion_value": value,
                    "previous": previous,
                    "previous_value": baseline,
                    "labelled_rows": len(vs.quality),
                    "rollback_margin": state.contract.monitoring.rollback_margin,
                },
            )
        ]

    def _retrain(self, state: ModelState, reason: str, evidence: dict[str, Any]) -> Outgoing:
        model = state.contract.name
        event = RetrainRequest(model=model, reason=reason, requested_by=ACTOR, evidence=evidence)
        self.metrics.actions.labels(model, "retrain").inc()
        self.logger.warning("action.retrain", model=model, reason=reason, evidence=evidence)
        return Outgoing(topics.RETRAIN_REQUESTS, model, event)

    def _deploy(
        self, state: ModelState, action: str, version: int, reason: str, evidence: dict[str, Any]
    ) -> Outgoing:
        # A request only: training, the registry's one writer, records the change and
        # publishes the deployment, which this core then follows like any other.
        model = state.contract.name
        event = DeploymentRequest(
            model=model,
            action="rollback" if action == "rollback" else "promote",
            version=version,
            actor=ACTOR,
            reason=reason,
            evidence=evidence,
        )
        self.metrics.actions.labels(model, action).inc()
        self.logger.warning(
            f"action.{action}", model=model, version=version, reason=reason, evidence=evidence
        )
        return Outgoing(topics.DEPLOYMENT_REQUESTS, model, event)

    # --- control-plane events ---------------------------------------------------------

    def on_deployment(self, d: Deployment) -> None:
        """Follow champion/challenger changes (training's recorded decisions)."""
        state = self.model(d.model)
        if state is None:
            self.metrics.rejected.labels(topics.MODELS_DEPLOYMENTS, "unknown_model").inc()
            return
        if not self._holds(topics.MODELS_DEPLOYMENTS, d.model, d.version):
            return
        if self.check is not None:
            try:
                self.check.check(d)
            except Refused as err:
                self.metrics.rejected.labels(topics.MODELS_DEPLOYMENTS, err.reason).inc()
                self.logger.warning(
                    "deployment.refused",
                    model=d.model,
                    version=d.version,
                    action=d.action,
                    reason=err.reason,
                    error=str(err),
                )
                return
        before = (state.champion, state.challenger)
        if d.action == "promote":
            if d.version != state.champion:
                old = state.versions.get(state.champion) if state.champion is not None else None
                state.previous_champion = state.champion
                state.baseline = old.last_primary if old is not None else None
                state.champion = d.version
            if state.challenger == d.version:
                state.challenger, state.challenger_mode = None, None
        elif d.action in ("shadow", "canary"):
            state.challenger, state.challenger_mode = d.version, d.action
            if d.champion_version is not None:
                state.champion = d.champion_version
        elif d.action == "rollback":
            state.champion = d.version
            state.challenger, state.challenger_mode = None, None
            state.previous_champion, state.baseline = None, None
        elif d.action == "retire" and state.challenger == d.version:
            state.challenger, state.challenger_mode = None, None
        # A new champion or challenger is a new question: the cool-down kept monitoring
        # from repeating a request about the old arrangement, and must not hold back the
        # first decision about this one (its labels may all arrive within the cool-down,
        # and decisions are made only as labels arrive).
        changed = (state.champion, state.challenger) != before
        state.rollback_trigger.reset(cooldown=changed)
        state.promote_trigger.reset(cooldown=changed)
        self.logger.info(
            "deployment.seen",
            model=d.model,
            action=d.action,
            version=d.version,
            actor=d.actor,
            champion=state.champion,
            challenger=state.challenger,
        )

    def on_registered(self, event: ModelRegistered) -> None:
        """Note a new model version."""
        if self.model(event.model) is None:
            self.metrics.rejected.labels(topics.MODELS_REGISTERED, "unknown_model").inc()
            return
        if not self._holds(topics.MODELS_REGISTERED, event.model, event.version):
            return
        self.metrics.registered.labels(event.model).set(event.version)
        self.logger.info("model.registered", model=event.model, version=event.version)

    def _holds(self, topic: str, model: str, version: int) -> bool:
        """True when the registry holds ``version``; else counted (``missing_model_version``)
        and logged: a broker that outlived its store replays events naming such versions."""
        if version in self.registry.version_numbers(model):
            return True
        self.metrics.rejected.labels(topic, "missing_model_version").inc()
        self.logger.warning(
            "event.missing_model_version", topic=topic, model=model, version=version
        )
        return False

    def _dataset(self, name: str | None) -> str:
        return name if name in self.contracts else "other" if name else UNKNOWN

    def on_validated(self, event: DatasetValidated) -> None:
        """Count a new dataset version."""
        self.metrics.dataset_versions.labels(self._dataset(event.dataset)).inc()

    def on_dead_letter(self, event: DeadLetter) -> None:
        """Count a dead letter."""
        self.metrics.dlq.labels(self._dataset(event.dataset)).inc()

    def on_quarantined(self, event: BatchQuarantined) -> None:
        """Count a quarantined batch."""
        self.metrics.quarantined.labels(self._dataset(event.dataset)).inc()
