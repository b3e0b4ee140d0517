"""Assembles the training service from its settings."""

from __future__ import annotations

import asyncio
import time

from shared import topics
from shared.contract import load_contracts
from shared.datasets import DatasetCatalog
from shared.kafka import EventPublisher, ensure_topics
from shared.registry import Registry
from shared.service import Component, Runtime
from shared.signing import Signer, load_key
from shared.store import ArtifactStore

from .core import RetryPolicy, TrainingCore
from .kafka import TrainingConsumer
from .metrics import TrainingMetrics
from .settings import TrainingSettings
from .trainer import TrainConfig

TOPICS = (
    topics.DATA_VALIDATED,
    topics.RETRAIN_REQUESTS,
    topics.MODELS_REGISTERED,
    topics.MODELS_DEPLOYMENTS,
    topics.DEPLOYMENT_REQUESTS,
)


def train_config(settings: TrainingSettings) -> TrainConfig:
    """The run knobs from the service settings."""
    return TrainConfig(
        search_budget_s=settings.search_budget_s,
        max_train_rows=settings.max_train_rows,
        cv_folds=settings.cv_folds,
        importance_rows=settings.importance_rows,
        importance_repeats=settings.importance_repeats,
        min_group_rows=settings.min_group_rows,
        corrupt_label_share=settings.corrupt_label_share,
        finish_ahead=settings.finish_ahead,
        background_nice=settings.background_nice,
    )


class Scheduler:
    """Queues scheduled retrains for contracts with ``training.schedule_seconds``."""

    def __init__(self, core: TrainingCore, runtime: Runtime, every_s: float):
        self.core = core
        self.runtime = runtime
        self.every_s = every_s

    async def start(self) -> None:
        """Start checking (only if some contract has a schedule)."""
        if any(c.training.schedule_seconds for c in self.core.contracts.values()):
            self.runtime.spawn(self._loop(), "training-schedule")

    async def stop(self) -> None:
        """Nothing to release: the runtime cancels the loop."""

    async def _loop(self) -> None:
        while True:
            for model, period in self.core.due_schedules(time.time()):
                self.core.submit_schedule(model, period)
            await asyncio.sleep(self.every_s)  # a periodic check, not a readiness wait


async def build(settings: TrainingSettings, runtime: Runtime) -> list[Component]:
    """The service's components, in start order."""
    created = await ensure_topics(settings.kafka, TOPICS)
    runtime.info["topics_created"] = created
    contracts = load_contracts(settings.contracts)
    runtime.info["models"] = sorted(contracts)
    store = ArtifactStore(settings.store)
    metrics = TrainingMetrics(runtime.registry)
    key = load_key(settings)
    if key is None:
        runtime.log.warning("deploy_key.missing", effect="deployment requests are refused")
    publisher = EventPublisher(
        settings.kafka, "training-producer", runtime.log, sign=Signer(key) if key else None
    )
    core = TrainingCore(
        contracts,
        Registry(store),
        DatasetCatalog(store),
        publisher,
        metrics,
        train_config(settings),
        runtime.log,
        settings.threads,
        runtime.spawn,
        RetryPolicy(settings.retry_base_s, settings.retry_max_s, settings.retry_attempts),
        search_process=settings.search_process,
    )
    consumer = TrainingConsumer(
        settings.kafka,
        settings.group_id,
        core,
        metrics,
        runtime.log,
        settings.poll_timeout_ms,
        runtime.spawn,
        settings.topic_check_s,
        deploy_key=key,
    )
    return [publisher, core, consumer, Scheduler(core, runtime, settings.schedule_check_s)]
