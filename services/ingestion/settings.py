"""Settings of the ingestion service (env prefix ``FLYWHEEL_INGESTION_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class IngestionSettings(ServiceSettings):
    """Settings of the ingestion service."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_INGESTION_")

    metrics_port: int = 9101
    """Port of the Prometheus metrics endpoint."""
