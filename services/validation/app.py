"""Assembles the validation service from its settings."""

from __future__ import annotations

from shared import topics
from shared.kafka import ensure_topics
from shared.service import Component, Runtime

from .settings import ValidationSettings

TOPICS = (
    topics.DATA_BATCHES,
    topics.DATA_VALIDATED,
    topics.DATA_QUARANTINED,
)


async def build(settings: ValidationSettings, runtime: Runtime) -> list[Component]:
    """The service's components, in start order."""
    created = await ensure_topics(settings.kafka, TOPICS)
    runtime.info["topics_created"] = created
    return []
