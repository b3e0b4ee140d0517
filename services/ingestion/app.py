"""Assembles the ingestion service from its settings."""

from __future__ import annotations

from shared import topics
from shared.kafka import ensure_topics
from shared.service import Component, Runtime

from .settings import IngestionSettings

TOPICS = (
    topics.DATA_EVENTS,
    topics.DATA_EVENTS_DLQ,
    topics.DATA_BATCHES,
)


async def build(settings: IngestionSettings, runtime: Runtime) -> list[Component]:
    """The service's components, in start order."""
    created = await ensure_topics(settings.kafka, TOPICS)
    runtime.info["topics_created"] = created
    return []
