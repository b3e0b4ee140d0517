"""Settings of the validation service (env prefix ``FLYWHEEL_VALIDATION_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class ValidationSettings(ServiceSettings):
    """Settings of the validation service."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_VALIDATION_")

    metrics_port: int = 9102
    """Port of the Prometheus metrics endpoint."""
    group_id: str = "flywheel-validation"
    """Consumer group shared by every validation replica."""
    profile_max_rows: int = Field(200_000, ge=100)
    """Newest rows of a dataset version that its reference profile is built from
    (bounds the work per accepted batch on long-lived datasets)."""
    topic_check_s: float = Field(10.0, gt=0)
    """While idle, how often to make sure the service's topics still exist (an embedded
    broker loses them on restart; creating them again is idempotent)."""
