"""Settings of the validation service (env prefix ``FLYWHEEL_VALIDATION_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ValidationSettings(ServiceSettings):
    """Settings of the validation service."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_VALIDATION_")

    metrics_port: int = 9102
    """Port of the Prometheus metrics endpoint."""
