"""Settings of the training service (env prefix ``FLYWHEEL_TRAINING_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class TrainingSettings(ServiceSettings):
    """Settings of the training service."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_TRAINING_")

    metrics_port: int = 9103
    """Port of the Prometheus metrics endpoint."""
