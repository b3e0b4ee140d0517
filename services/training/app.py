"""Assembles the training service from its settings."""

from __future__ import annotations

from shared import topics
from shared.kafka import ensure_topics
from shared.service import Component, Runtime

from .settings import TrainingSettings

TOPICS = (
    topics.DATA_VALIDATED,
    topics.RETRAIN_REQUESTS,
    topics.MODELS_REGISTERED,
    topics.MODELS_DEPLOYMENTS,
)


async def build(settings: TrainingSettings, runtime: Runtime) -> list[Component]:
    """The service's components, in start order."""
    created = await ensure_topics(settings.kafka, TOPICS)
    runtime.info["topics_created"] = created
    return []
