"""Settings of the monitoring service (env prefix ``FLYWHEEL_MONITORING_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class MonitoringSettings(ServiceSettings):
    """Settings of the monitoring service."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_MONITORING_")

    metrics_port: int = 9105
    """Port of the Prometheus metrics endpoint."""
