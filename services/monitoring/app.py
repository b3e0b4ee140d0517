"""Assembles the monitoring service from its settings."""

from __future__ import annotations

from shared import topics
from shared.contract import load_contracts
from shared.datasets import DatasetCatalog
from shared.deployment_check import DeploymentCheck
from shared.kafka import EventPublisher, ensure_topics
from shared.registry import Registry
from shared.service import Component, Runtime
from shared.signing import Signer, load_key
from shared.store import ArtifactStore

from .core import Limits, MonitoringCore
from .join import LabelJoin
from .kafka import ControlConsumer, StreamConsumer
from .lag import LagProbe
from .metrics import MonitoringMetrics
from .predlog import PredictionLog
from .router import FeedbackRouter
from .settings import MonitoringSettings
from .state import PartitionSnapshots

TOPICS = (
    topics.PREDICTIONS,
    topics.FEEDBACK,
    topics.FEEDBACK_ROUTED,
    topics.DATA_VALIDATED,
    topics.MODELS_REGISTERED,
    topics.MODELS_DEPLOYMENTS,
    topics.DEPLOYMENT_REQUESTS,
    topics.DATA_EVENTS_DLQ,
    topics.DATA_QUARANTINED,
    topics.RETRAIN_REQUESTS,
)


async def build(settings: MonitoringSettings, runtime: Runtime) -> list[Component]:
    """The service's components, in start order."""
    created = await ensure_topics(settings.kafka, TOPICS)
    runtime.info["topics_created"] = created
    contracts = load_contracts(settings.contracts)
    store = ArtifactStore(settings.store)
    metrics = MonitoringMetrics(runtime.registry)
    registry = Registry(store)
    # Read before the core: it verifies deployment events with the key, as serving does.
    key = load_key(settings)
    core = MonitoringCore(
        contracts,
        registry,
        DatasetCatalog(store),
        metrics,
        LabelJoin(settings.join_max_pending, settings.join_max_age_s),
        PredictionLog(store, settings.log_flush_rows, settings.log_flush_s),
        runtime.log,
        Limits(
            eval_every_labels=settings.eval_every_labels,
            max_versions=settings.max_versions,
            window_rows=settings.window_rows,
            cooldown_s=settings.cooldown_s,
        ),
        check=DeploymentCheck(contracts, registry, key),
    )
    control = ControlConsumer(
        settings.kafka, core, metrics, runtime.log, runtime.spawn, settings.poll_timeout_ms
    )
    # Pinned before the registry is read: no deployment in between is missed.
    await control.position()
    core.load_aliases()
    runtime.info["models"] = sorted(contracts)
    if key is None:
        runtime.log.warning(
            "deploy_key.missing",
            effect="rollback requests and deployment events are refused",
        )
    publisher = EventPublisher(
        settings.kafka, "monitoring-producer", runtime.log, sign=Signer(key) if key else None
    )
    stream = StreamConsumer(
        settings.kafka,
        settings.group_id,
        core,
        PartitionSnapshots(store, settings.group_id),
        publisher,
        metrics,
        runtime.log,
        runtime.spawn,
        settings.poll_timeout_ms,
        settings.topic_check_s,
    )
    router = FeedbackRouter(
        settings.kafka,
        f"{settings.group_id}-router",
        metrics,
        runtime.log,
        runtime.spawn,
        settings.poll_timeout_ms,
    )
    lag = LagProbe(settings.kafka, metrics, runtime.log, runtime.spawn, settings.lag_interval_s)
    return [publisher, control, stream, router, lag]
