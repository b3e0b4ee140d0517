"""Assembles the validation service from its settings."""

from __future__ import annotations

from shared.contract import load_contracts
from shared.service import Component, Runtime
from shared.store import ArtifactStore

from .core import Validator
from .metrics import ValidationMetrics
from .settings import ValidationSettings
from .worker import TOPICS, ValidationWorker

__all__ = ["TOPICS", "build"]


async def build(settings: ValidationSettings, runtime: Runtime) -> list[Component]:
    """The service's components, in start order."""
    contracts = load_contracts(settings.contracts)
    validator = Validator(
        contracts,
        ArtifactStore(settings.store),
        ValidationMetrics(runtime.registry),
        profile_max_rows=settings.profile_max_rows,
    )
    runtime.info["datasets"] = sorted(contracts)
    return [ValidationWorker(settings, validator, runtime)]
