"""Assembles the ingestion service from its settings."""

from __future__ import annotations

from shared.contract import load_contracts
from shared.service import Component, Runtime
from shared.store import ArtifactStore

from .core import Ingestor
from .metrics import IngestionMetrics
from .settings import IngestionSettings
from .worker import TOPICS, IngestionWorker

__all__ = ["TOPICS", "build"]


async def build(settings: IngestionSettings, runtime: Runtime) -> list[Component]:
    """The service's components, in start order."""
    contracts = load_contracts(settings.contracts)
    ingestor = Ingestor(
        contracts,
        ArtifactStore(settings.store),
        IngestionMetrics(runtime.registry),
        batch_rows=settings.batch_rows,
        batch_seconds=settings.batch_seconds,
        dedup_window=settings.dedup_window,
        max_event_bytes=settings.max_event_bytes,
    )
    runtime.info["datasets"] = sorted(contracts)
    return [IngestionWorker(settings, ingestor, runtime)]
