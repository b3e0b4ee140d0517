"""Pydantic models for every event body on Flywheel's topics: one source of truth.

Internal events derive from :class:`Event` (``schema_version``, ``id``, ``created``).
The two wire formats users write themselves — :class:`DataEvent` and :class:`Feedback` —
are kept exactly as documented in the README and tolerate extra fields.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

Scalar = float | int | str | bool | None


def new_id() -> str:
    """A fresh random event id (hex UUID4)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every internal event: schema version, unique id, creation time."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    schema_version: int = SCHEMA_VERSION
    id: str = Field(default_factory=new_id)
    created: datetime = Field(default_factory=utcnow)


# --- wire formats written by users -------------------------------------------------------


class DataEvent(BaseModel):
    """One labelled record on ``data.events`` (the user-facing wire format)."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    dataset: str
    event_id: str
    event_time: str | int | float | None = None
    features: dict[str, Scalar]
    label: Scalar = None


class Feedback(BaseModel):
    """A delayed true label on ``feedback``: prediction id -> label."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    prediction_id: str
    label: Scalar


# --- ingestion ---------------------------------------------------------------------------


class DeadLetter(Event):
    """A rejected input on ``data.events.dlq``: the original bytes, where it came from, why."""

    source_topic: str
    partition: int
    offset: int
    dataset: str | None = None
    event_id: str | None = None
    field: str | None = None
    """The offending field (``features.AGEP``, ``label``, ``$`` for the whole message)."""
    error: str
    """What is wrong, in words."""
    payload: str
    """The original bytes: UTF-8 text when decodable, else base64."""
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    payload_bytes: int | None = None
    """Size of the original message in bytes."""
    payload_truncated: bool = False
    """True when ``payload`` holds only a prefix (an oversized message: see ``error``)."""
    payload_sha256: str | None = None
    """sha256 of the whole original message, when ``payload`` is truncated."""


class PartitionOffsets(BaseModel):
    """Offset range of one source partition that went into a batch (inclusive)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    topic: str
    partition: int
    first: int
    last: int


class BatchCreated(Event):
    """An immutable raw Parquet batch written by ingestion, on ``data.batches``."""

    dataset: str
    batch_id: str
    """The sha256 of the Parquet object (its name in the store)."""
    uri: str
    rows: int
    sha256: str
    min_event_time: str | None = None
    max_event_time: str | None = None
    offsets: list[PartitionOffsets] = Field(default_factory=list)


# --- validation --------------------------------------------------------------------------


class DriftSummary(BaseModel):
    """Per-feature drift scores of a batch against the reference profile."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    drifted: bool = False
    features: dict[str, dict[str, float]] = Field(default_factory=dict)
    """feature -> {"psi": .., "ks": .., "wasserstein": .., "js": .., "chi2_p": ..} (what
    applies to its type: psi, ks and the normed wasserstein for numeric features, psi,
    js and chi2_p for categories)."""
    drifted_features: list[str] = Field(default_factory=list)
    label_drift: float | None = None


class DatasetValidated(Event):
    """A new immutable dataset version on ``data.validated``."""

    dataset: str
    dataset_version: str
    parent: str | None = None
    rows: int
    """Total rows in this dataset version."""
    new_rows: int
    """Rows the accepted batch added."""
    batch_ids: list[str]
    report_uri: str
    drift: DriftSummary = Field(default_factory=DriftSummary)


class BatchQuarantined(Event):
    """A batch refused by validation, on ``data.quarantined``."""

    dataset: str
    batch_id: str
    failed_rules: list[str]
    report_uri: str
    reason: str


# --- training ----------------------------------------------------------------------------


class ModelRegistered(Event):
    """A model version written to the registry, on ``models.registered``."""

    model: str
    version: int
    dataset_version: str
    manifest_uri: str
    metrics: dict[str, float] = Field(default_factory=dict)
    gates: dict[str, bool] = Field(default_factory=dict)
    """Gate name -> passed."""
    promoted: bool = False
    reason: str = ""
    """Why it was trained (first model, new rows, drift, schedule, request: ...)."""


DeploymentAction = Literal["promote", "shadow", "canary", "rollback", "retire"]


class Deployment(Event):
    """A change of what serving answers with, on ``models.deployments``.

    ``promote``: ``version`` becomes champion. ``shadow``: ``version`` scores beside the
    champion off the response path. ``canary``: ``canary_percent`` of rows are answered by
    ``version``. ``rollback``: ``version`` (the previous champion) becomes champion again
    and any challenger is dropped. ``retire``: drop the challenger.
    """

    model: str
    action: DeploymentAction
    version: int
    champion_version: int | None = None
    """The champion after this change (for shadow/canary: the one still answering)."""
    canary_percent: float | None = None
    actor: str = "training"
    """Who made the change: a service name or ``user:<name>``."""
    reason: str


# --- serving and monitoring --------------------------------------------------------------


class Prediction(Event):
    """One served row on ``predictions`` (``id`` is the prediction id)."""

    model: str
    model_version: int
    data_version: str
    request_id: str
    role: Literal["champion", "canary", "shadow", "pinned"] = "champion"
    inputs: dict[str, Scalar]
    outputs: dict[str, Any]
    """``label`` and ``probabilities`` (classifiers) or ``prediction`` (regressors)."""
    shadow: dict[str, Any] | None = None
    """The shadow model's version and outputs for the same row, if one ran."""
    latency_ms: float


class RetrainRequest(Event):
    """A request to train a model again, on ``retrain.requests``."""

    model: str
    reason: str
    requested_by: str = "user"
    evidence: dict[str, Any] = Field(default_factory=dict)
