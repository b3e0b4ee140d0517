"""The training service's Prometheus metrics, on the service's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PHASE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class TrainingMetrics:
    """Every metric the training service exports.

    Args:
        registry: the service's explicit registry.
    """

    def __init__(self, registry: CollectorRegistry):
        self.runs = Counter(
            "flywheel_training_runs_total",
            "Training decisions and runs by outcome "
            "(promoted|registered|refused|failed|deferred|skipped).",
            ["model", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "flywheel_training_run_failures_total",
            "Failed runs by the phase that raised (prepare, search, fit, evaluate, export, "
            "parity, register, publish, decide); each is recorded and retried with back-off.",
            ["model", "phase"],
            registry=registry,
        )
        self.consecutive_failures = Gauge(
            "flywheel_training_consecutive_failures",
            "Failed runs of the model since its last completed one (0: healthy).",
            ["model"],
            registry=registry,
        )
        self.phase_seconds = Histogram(
            "flywheel_training_phase_seconds",
            "Wall time of each phase of a run (search, fit, evaluate, export, parity; a "
            "fast first candidate's as fast_first:fit, fast_first:evaluate, ...).",
            ["model", "phase"],
            buckets=PHASE_BUCKETS,
            registry=registry,
        )
        self.primary_metric = Gauge(
            "flywheel_training_primary_metric",
            "The contract's primary metric of a registered version on its holdout.",
            ["model", "version"],
            registry=registry,
        )
        self.events = Counter(
            "flywheel_training_events_total",
            "Consumed events by topic and outcome (accepted|rejected|ignored).",
            ["topic", "outcome"],
            registry=registry,
        )
        self.coalesced = Counter(
            "flywheel_training_coalesced_total",
            "Triggers merged into a run that was already waiting.",
            ["model"],
            registry=registry,
        )
        self.deployments = Counter(
            "flywheel_training_deployments_total",
            "Deployment changes applied to the registry aliases (or refused).",
            ["model", "action", "outcome"],
            registry=registry,
        )
        self.last_run = Gauge(
            "flywheel_training_last_run_timestamp_seconds",
            "When the last run of a model finished (any outcome but skipped).",
            ["model"],
            registry=registry,
        )
        self.missing = Counter(
            "flywheel_training_missing_objects_total",
            "Triggers naming a store object the store does not hold (e.g. a broker that "
            "outlived its store replaying data.validated): skipped, offset committed.",
            ["model", "kind"],
            registry=registry,
        )
        self.running = Gauge(
            "flywheel_training_running",
            "1 while a run of the model is in progress.",
            ["model"],
            registry=registry,
        )
