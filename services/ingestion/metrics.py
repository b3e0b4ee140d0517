"""Prometheus metrics of the ingestion service, on the service's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestionMetrics:
    """Every metric ingestion exports.

    Args:
        registry: the service's registry (tests pass a fresh one).
    """

    def __init__(self, registry: CollectorRegistry):
        self.events = Counter(
            "flywheel_ingestion_events_total",
            "Data events by outcome (accepted, duplicate, rejected).",
            ["dataset", "outcome"],
            registry=registry,
        )
        self.batches = Counter(
            "flywheel_ingestion_batches_total",
            "Raw Parquet batches written and announced on data.batches.",
            ["dataset"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            "flywheel_ingestion_batch_rows",
            "Rows per raw batch.",
            buckets=(10, 100, 500, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000),
            registry=registry,
        )
        self.dlq = Counter(
            "flywheel_ingestion_dlq_total",
            "Events sent to data.events.dlq, by reason.",
            ["dataset", "reason"],
            registry=registry,
        )
        self.dedup_ids = Gauge(
            "flywheel_ingestion_dedup_ids",
            "Event ids held in the bounded deduplication window, per dataset.",
            ["dataset"],
            registry=registry,
        )
        self.flush_seconds = Histogram(
            "flywheel_ingestion_flush_seconds",
            "Time to write a flush's Parquet objects and get its batch events acknowledged.",
            registry=registry,
        )
