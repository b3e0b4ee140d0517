"""Assembles the monitoring service from its settings."""

from __future__ import annotations

from shared import topics
from shared.contract import load_contracts
from shared.datasets import DatasetCatalog
from shared.kafka import EventPublisher, ensure_topics
from shared.registry import Registry
from shared.service import Component, Runtime
from shared.store import ArtifactStore

from .core import Limits, MonitoringCore
from .join import LabelJoin
from .kafka import MonitoringConsumer
from .lag import LagProbe
from .metrics import MonitoringMetrics
from .predlog import PredictionLog
from .settings import MonitoringSettings

TOPICS = (
    topics.PREDICTIONS,
    topics.FEEDBACK,
    topics.DATA_VALIDATED,
    topics.MODELS_REGISTERED,
    topics.MODELS_DEPLOYMENTS,
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
    core = MonitoringCore(
        contracts,
        Registry(store),
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
    )
    core.load_aliases()
    runtime.info["models"] = sorted(contracts)
    publisher = EventPublisher(settings.kafka, "monitoring-producer", runtime.log)
    consumer = MonitoringConsumer(
        settings.kafka,
        settings.group_id,
        core,
        publisher,
        metrics,
        runtime.log,
        runtime.spawn,
        settings.poll_timeout_ms,
        settings.topic_check_s,
    )
    lag = LagProbe(settings.kafka, metrics, runtime.log, runtime.spawn, settings.lag_interval_s)
    return [publisher, consumer, lag]
