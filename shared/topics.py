"""The topic registry: every Kafka topic Flywheel uses, in one place."""

from __future__ import annotations

from typing import Final

DATA_EVENTS: Final = "data.events"
DATA_EVENTS_DLQ: Final = "data.events.dlq"
DATA_BATCHES: Final = "data.batches"
DATA_VALIDATED: Final = "data.validated"
DATA_QUARANTINED: Final = "data.quarantined"
MODELS_REGISTERED: Final = "models.registered"
MODELS_DEPLOYMENTS: Final = "models.deployments"
DEPLOYMENT_REQUESTS: Final = "deployment.requests"
PREDICTIONS: Final = "predictions"
FEEDBACK: Final = "feedback"
FEEDBACK_ROUTED: Final = "feedback.routed"
RETRAIN_REQUESTS: Final = "retrain.requests"

ALL_TOPICS: Final[tuple[str, ...]] = (
    DATA_EVENTS,
    DATA_EVENTS_DLQ,
    DATA_BATCHES,
    DATA_VALIDATED,
    DATA_QUARANTINED,
    MODELS_REGISTERED,
    MODELS_DEPLOYMENTS,
    DEPLOYMENT_REQUESTS,
    PREDICTIONS,
    FEEDBACK,
    FEEDBACK_ROUTED,
    RETRAIN_REQUESTS,
)

# Header names carried by every message Flywheel publishes.
HEADER_TRACE_ID: Final = "trace-id"
HEADER_CONTENT_TYPE: Final = "content-type"
HEADER_SCHEMA_VERSION: Final = "schema-version"
