"""Assembles the monitoring service from its settings."""

from __future__ import annotations

from shared import topics
from shared.kafka import ensure_topics
from shared.service import Component, Runtime

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
    return []
