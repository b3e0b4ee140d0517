"""What travels on each topic: key, body model, producers and consumers.

The README's topic reference (docs/topics.md) is generated from this table and the
pydantic models' JSON schemas by ``tools/gen_topics_doc.py``, so it is never written twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from shared import events, topics

DAY_MS = 24 * 3600 * 1000
FOREVER = -1
"""``retention.ms`` of a topic whose history is the record of decisions (never deleted)."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic's contract."""

    name: str
    key: str
    body: type[BaseModel]
    producers: str
    consumers: str
    summary: str
    retention_ms: int
    """The topic's ``retention.ms``, set when ``flywheel ensure-topics`` creates it."""


TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(
        topics.DATA_EVENTS,
        "dataset name (optional)",
        events.DataEvent,
        "users (any Kafka client), `flywheel publish`",
        "ingestion",
        "one labelled record (user wire format)",
        7 * DAY_MS,
    ),
    TopicSpec(
        topics.DATA_EVENTS_DLQ,
        "dataset name when known",
        events.DeadLetter,
        "ingestion",
        "people, monitoring",
        "a rejected event: original bytes, source offset, the field and what is wrong",
        30 * DAY_MS,
    ),
    TopicSpec(
        topics.DATA_BATCHES,
        "dataset name",
        events.BatchCreated,
        "ingestion",
        "validation",
        "an immutable Parquet batch named by its sha256",
        30 * DAY_MS,
    ),
    TopicSpec(
        topics.DATA_VALIDATED,
        "dataset name",
        events.DatasetValidated,
        "validation",
        "training, monitoring",
        "a new immutable dataset version",
        30 * DAY_MS,
    ),
    TopicSpec(
        topics.DATA_QUARANTINED,
        "dataset name",
        events.BatchQuarantined,
        "validation",
        "people, monitoring",
        "a refused batch, its failed rules and report",
        30 * DAY_MS,
    ),
    TopicSpec(
        topics.MODELS_REGISTERED,
        "model name",
        events.ModelRegistered,
        "training",
        "monitoring",
        "a registered model version with metrics and gates",
        FOREVER,
    ),
    TopicSpec(
        topics.MODELS_DEPLOYMENTS,
        "model name",
        events.Deployment,
        "training (the registry's one writer), signed",
        "serving, monitoring",
        "a recorded registry decision: champion / shadow / canary / rollback",
        FOREVER,
    ),
    TopicSpec(
        topics.DEPLOYMENT_REQUESTS,
        "model name",
        events.DeploymentRequest,
        "`flywheel promote/rollback/approve`, monitoring (rollback, canary promotion), signed",
        "training",
        "a request to move an alias or approve a version; training decides",
        30 * DAY_MS,
    ),
    TopicSpec(
        topics.PREDICTIONS,
        "request key (the prefix of the request's prediction ids)",
        events.PredictionBatch,
        "serving",
        "monitoring",
        "one answered request (schema version 2): its rows column by column, tagged with "
        "model and data version; row `i` has the prediction id `<id>-<i>`",
        7 * DAY_MS,
    ),
    TopicSpec(
        topics.FEEDBACK,
        "any (optional)",
        events.Feedback,
        "users",
        "monitoring (its router)",
        "the true label of a prediction, when it is known",
        7 * DAY_MS,
    ),
    TopicSpec(
        topics.FEEDBACK_ROUTED,
        "routing key of the prediction id (the part before its last `-`)",
        events.Feedback,
        "monitoring (its router re-keys `feedback`)",
        "monitoring",
        "feedback forwarded unchanged onto its prediction's partition number (internal)",
        7 * DAY_MS,
    ),
    TopicSpec(
        topics.RETRAIN_REQUESTS,
        "model name",
        events.RetrainRequest,
        "monitoring, people",
        "training",
        "a request to retrain, with its evidence",
        7 * DAY_MS,
    ),
)


RETENTION_MS: dict[str, int] = {spec.name: spec.retention_ms for spec in TOPIC_SPECS}
"""Topic -> the ``retention.ms`` it is created with."""
