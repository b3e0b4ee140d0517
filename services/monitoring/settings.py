"""Settings of the monitoring service (env prefix ``FLYWHEEL_MONITORING_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class MonitoringSettings(ServiceSettings):
    """Settings of the monitoring service."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_MONITORING_")

    metrics_port: int = 9105
    """Port of the Prometheus metrics endpoint."""
    group_id: str = "flywheel-monitoring"
    """Consumer group of the monitoring service."""
    poll_timeout_ms: int = Field(500, ge=10)
    """How long one consumer poll waits for records."""
    join_max_pending: int = Field(200_000, ge=10)
    """Predictions kept waiting for their feedback; the oldest is evicted beyond this."""
    join_max_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    """Predictions older than this stop waiting for feedback (evicted, counted)."""
    window_rows: int | None = Field(None, ge=10)
    """Overrides every contract's ``monitoring.window_rows`` (tests, small deployments)."""
    eval_every_labels: int = Field(100, ge=1)
    """Live quality is recomputed after this many newly joined labels of a version."""
    max_versions: int = Field(4, ge=2)
    """Model versions tracked per model; older ones' series are removed (bounded labels)."""
    cooldown_s: float | None = Field(None, ge=0)
    """Overrides every contract's ``monitoring.cooldown_s``."""
    log_flush_rows: int = Field(5000, ge=1)
    """Prediction-log rows buffered before a Parquet object is written."""
    log_flush_s: float = Field(10.0, gt=0)
    """Longest time a prediction-log row stays buffered (offsets commit after the flush)."""
    topic_check_s: float = Field(10.0, gt=0)
    """While idle, how often to make sure the consumed topics still exist (an embedded
    broker loses them on restart; creating them again is idempotent)."""
    lag_interval_s: float = Field(15.0, gt=0)
    """How often consumer-group lag is measured."""
