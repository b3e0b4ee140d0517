"""Assembles the serving service from its settings."""

from __future__ import annotations

from shared import topics
from shared.kafka import ensure_topics
from shared.service import Component, Runtime

from .settings import ServingSettings

TOPICS = (
    topics.MODELS_DEPLOYMENTS,
    topics.PREDICTIONS,
)


async def build(settings: ServingSettings, runtime: Runtime) -> list[Component]:
    """The service's components, in start order."""
    created = await ensure_topics(settings.kafka, TOPICS)
    runtime.info["topics_created"] = created
    return []
