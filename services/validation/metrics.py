"""Prometheus metrics of the validation service, on the service's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ValidationMetrics:
    """Every metric validation exports.

    Args:
        registry: the service's registry (tests pass a fresh one).
    """

    def __init__(self, registry: CollectorRegistry):
        self.batches = Counter(
            "flywheel_validation_batches_total",
            "Validated batches by verdict (accept, quarantine).",
            ["dataset", "verdict"],
            registry=registry,
        )
        self.row_failures = Counter(
            "flywheel_validation_row_failures_total",
            "Rows failing each row rule (a row may fail several).",
            ["dataset", "rule"],
            registry=registry,
        )
        self.rejected_rows = Counter(
            "flywheel_validation_rejected_rows_total",
            "Rows left out of accepted batches' dataset versions, by the row rule they failed "
            "(each written with its event id to the rejected-rows record).",
            ["dataset", "rule"],
            registry=registry,
        )
        self.drift = Gauge(
            "flywheel_validation_drift_score",
            "Drift of the last batch against the dataset's reference profile.",
            ["dataset", "feature", "stat"],
            registry=registry,
        )
        self.rows = Gauge(
            "flywheel_validation_dataset_rows",
            "Rows in the newest dataset version.",
            ["dataset"],
            registry=registry,
        )
        self.last_accepted = Gauge(
            "flywheel_validation_last_accepted_timestamp_seconds",
            "Unix time of the last accepted batch (freshness = time() - this).",
            ["dataset"],
            registry=registry,
        )
        self.replays = Counter(
            "flywheel_validation_replayed_batches_total",
            "Batch events seen again (already accepted or quarantined): not re-applied.",
            ["dataset"],
            registry=registry,
        )
        self.invalid = Counter(
            "flywheel_validation_invalid_messages_total",
            "data.batches messages that could not be handled (bad body, unknown dataset, "
            "unreadable object, missing_batch: an object the store does not hold); each is "
            "logged, and quarantined when possible (a missing batch is skipped).",
            ["dataset", "reason"],
            registry=registry,
        )
