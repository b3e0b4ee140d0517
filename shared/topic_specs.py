"""What travels on each topic: key, body model, producers and consumers.

The README's topic reference (docs/topics.md) is generated from this table and the
pydantic models' JSON schemas by ``tools/gen_topics_doc.py``, so it is never written twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from shared import events, topics


@dataclass(frozen=True)
class TopicSpec:
    """One topic's contract."""

    name: str
    key: str
    body: type[BaseModel]
    producers: str
    consumers: str
    summary: str


TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(
        topics.DATA_EVENTS,
        "dataset name (optional)",
        events.DataEvent,
        "users (any Kafka client), `flywheel publish`",
        "ingestion",
        "one labelled record (user wire format)",
    ),
    TopicSpec(
        topics.DATA_EVENTS_DLQ,
        "dataset name when known",
        events.DeadLetter,
        "ingestion",
        "people, monitoring",
        "a rejected event: original bytes, source offset, the field and what is wrong",
    ),
    TopicSpec(
        topics.DATA_BATCHES,
        "dataset name",
        events.BatchCreated,
        "ingestion",
        "validation",
        "an immutable Parquet batch named by its sha256",
    ),
    TopicSpec(
        topics.DATA_VALIDATED,
        "dataset name",
        events.DatasetValidated,
        "validation",
        "training, monitoring",
        "a new immutable dataset version",
    ),
    TopicSpec(
        topics.DATA_QUARANTINED,
        "dataset name",
        events.BatchQuarantined,
        "validation",
        "people, monitoring",
        "a refused batch, its failed rules and report",
    ),
    TopicSpec(
        topics.MODELS_REGISTERED,
        "model name",
        events.ModelRegistered,
        "training",
        "monitoring",
        "a registered model version with metrics and gates",
    ),
    TopicSpec(
        topics.MODELS_DEPLOYMENTS,
        "model name",
        events.Deployment,
        "training; promotion/rollback requests from `flywheel` and monitoring",
        "serving, monitoring, training",
        "champion / shadow / canary / rollback changes",
    ),
    TopicSpec(
        topics.PREDICTIONS,
        "model name",
        events.Prediction,
        "serving",
        "monitoring",
        "one served row, tagged with model and data version",
    ),
    TopicSpec(
        topics.FEEDBACK,
        "prediction id (optional)",
        events.Feedback,
        "users",
        "monitoring",
        "the true label of a prediction, when it is known",
    ),
    TopicSpec(
        topics.RETRAIN_REQUESTS,
        "model name",
        events.RetrainRequest,
        "monitoring, people",
        "training",
        "a request to retrain, with its evidence",
    ),
)
