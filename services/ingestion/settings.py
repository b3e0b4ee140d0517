"""Settings of the ingestion service (env prefix ``FLYWHEEL_INGESTION_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class IngestionSettings(ServiceSettings):
    """Settings of the ingestion service."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_INGESTION_")

    metrics_port: int = 9101
    """Port of the Prometheus metrics endpoint."""
    group_id: str = "flywheel-ingestion"
    """Consumer group shared by every ingestion replica."""
    batch_rows: int = Field(20_000, ge=1)
    """Accepted rows of one dataset that trigger a flush of every buffer."""
    batch_seconds: float = Field(2.0, gt=0)
    """Age of the oldest buffered row that triggers a flush (the time window)."""
    max_poll_records: int = Field(5_000, ge=1)
    """Records fetched per ``getmany`` call."""
    poll_timeout_ms: int = Field(200, ge=1)
    """How long one ``getmany`` waits for records; bounds the flush latency of the window."""
    dedup_window: int = Field(1_000_000, ge=2)
    """Event ids remembered per dataset for deduplication (memory bound: about 100 bytes
    per id). Replays older than this many newer events are not recognised."""
    max_event_bytes: int = Field(512 * 1024, ge=1024)
    """Largest data event accepted; larger ones go to the DLQ (reason ``too_large``)
    with their first 4 KiB, size and sha256."""
    publish_retry_s: float = Field(60.0, ge=0)
    """How long a failed dead-letter or batch event send is retried (topics recreated,
    back-off) before the service gives up and stops without committing."""
    topic_check_s: float = Field(10.0, gt=0)
    """While idle, how often to make sure the service's topics still exist (an embedded
    broker loses them on restart; creating them again is idempotent)."""
