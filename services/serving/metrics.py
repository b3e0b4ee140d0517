"""The serving service's Prometheus metrics, on the runtime's explicit registry.

Hot-path children (``labels(...)``) are cached so a request pays one dict lookup per
metric, not a label resolution.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
UNKNOWN_MODEL = "_unknown"
"""The ``model`` label of requests naming a model no contract defines (bounded cardinality)."""


class ServingMetrics:
    """Every serving metric.

    Args:
        registry: the service's registry (a fresh one per test).
    """

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "flywheel_serving_requests_total",
            "Inference requests by model, answering version and gRPC status code.",
            ["model", "version", "code"],
            registry=registry,
        )
        self.errors = Counter(
            "flywheel_serving_errors_total",
            "Failed requests by model and gRPC status code.",
            ["model", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "flywheel_serving_request_duration_seconds",
            "Time from a request's arrival at the data plane to its outputs.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "flywheel_serving_batch_size",
            "Rows per ONNX Runtime call (after adaptive batching).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_delay = Histogram(
            "flywheel_serving_queue_delay_seconds",
            "Time the oldest request of a merged batch waited in the adaptive batcher.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "flywheel_serving_model_info",
            "1 per loaded model version, with its role (champion, canary, shadow).",
            ["model", "version", "role"],
            registry=registry,
        )
        self.swaps = Counter(
            "flywheel_serving_swaps_total",
            "Champion changes applied without a restart.",
            ["model"],
            registry=registry,
        )
        self.events_dropped = Counter(
            "flywheel_serving_prediction_events_dropped_total",
            "Prediction rows whose events were dropped: the buffer stayed full past the wait "
            "bound (Kafka unreachable), the service stopped, or serialisation failed.",
            ["model"],
            registry=registry,
        )
        self.event_wait = Histogram(
            "flywheel_serving_prediction_event_wait_seconds",
            "Time a request waited for room in the full prediction-event buffer "
            "(back-pressure from Kafka), observed only for requests that waited.",
            ["model"],
            buckets=(*LATENCY_BUCKETS, 2.5, 5.0),
            registry=registry,
        )
        self.events_published = Counter(
            "flywheel_serving_prediction_events_published_total",
            "Prediction rows whose events Kafka acknowledged (acks=all).",
            ["model"],
            registry=registry,
        )
        self.load_failures = Counter(
            "flywheel_serving_load_failures_total",
            "Model versions that could not be loaded (tampered, missing, invalid).",
            ["model", "reason"],
            registry=registry,
        )
        self.deployments = Counter(
            "flywheel_serving_deployments_total",
            "Deployment events by model, action and outcome "
            "(applied, refused, failed, ignored, invalid).",
            ["model", "action", "outcome"],
            registry=registry,
        )
        self.deployment_refusals = Counter(
            "flywheel_serving_deployment_refusals_total",
            "Deployments (and registry versions at start-up) refused after checking them "
            "against the registry, by reason (signature, canary_share, parity, gates, "
            "approval, digest, not_recorded, mismatch, ...).",
            ["model", "reason"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "flywheel_serving_auth_failures_total",
            "Calls refused for a missing or unknown bearer token.",
            registry=registry,
        )
        self._ok: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._batch: dict[str, Histogram] = {}

    def served(self, model: str, version: str, seconds: float) -> None:
        """Count one successful request and its duration."""
        children = self._ok.get((model, version))
        if children is None:
            children = (
                self.requests.labels(model, version, "OK"),
                self.duration.labels(model),
            )
            self._ok[(model, version)] = children
        children[0].inc()
        children[1].observe(seconds)

    def batched(self, model: str, rows: int) -> None:
        """Observe one ONNX Runtime call of ``rows`` rows made without the batcher."""
        child = self._batch.get(model)
        if child is None:
            child = self._batch[model] = self.batch_size.labels(model)
        child.observe(rows)

    def failed(self, model: str, version: str, code: str) -> None:
        """Count one failed request."""
        self.requests.labels(model, version, code).inc()
        self.errors.labels(model, code).inc()
