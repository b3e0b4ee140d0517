"""Settings of the serving service (env prefix ``FLYWHEEL_SERVING_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ServingSettings(ServiceSettings):
    """Settings of the serving service."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_SERVING_")

    metrics_port: int = 9104
    """Port of the Prometheus metrics endpoint."""
