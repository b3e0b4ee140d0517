"""Pydantic models for every event body on Flywheel's topics: one source of truth.

Internal events derive from :class:`Event` (``schema_version``, ``id``, ``created``).
The two wire formats users write themselves — :class:`DataEvent` and :class:`Feedback` —
are kept exactly as documented in the README and tolerate extra fields.
"""

from __future__ import annotations

import uuid
from abc import abstractmethod
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class RejectedRows(BaseModel):
    """The rows of a batch that validation left out, by rule (the rows themselves, each
    with its event id, rule and value, are in the Parquet object at ``uri``)."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    rows: int = 0
    """Rows left out of the dataset version (a row failing several rules counts once)."""
    by_rule: dict[str, int] = Field(default_factory=dict)
    """Rule -> rows it failed (``range:<feature>``, ``allowed_values:<feature>``,
    ``not_null:<feature>``, ``label_values``, ``duplicate_id``)."""
    uri: str | None = None
    """The rejected-rows record (``flywheel rejected <dataset>`` reads it); None: none."""


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
    rejected: RejectedRows = Field(default_factory=RejectedRows)
    """Rows of the accepted batch that failed a row rule and were left out."""


class BatchQuarantined(Event):
    """A batch refused by validation, on ``data.quarantined``."""

    dataset: str
    batch_id: str
    failed_rules: list[str]
    report_uri: str
    reason: str
    rejected: RejectedRows = Field(default_factory=RejectedRows)
    """Rows of the batch that failed a row rule (the whole batch is left out)."""


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
RequestAction = Literal["promote", "shadow", "canary", "rollback", "retire", "approve"]


class Deployment(Event):
    """A registry decision that changes what serving answers with, on ``models.deployments``.

    Published by training only, after it recorded the decision in the registry's alias
    history, and signed (:mod:`shared.signing`). ``history`` names the alias-history
    entries of this decision; the other fields restate the registry's state after it,
    and serving checks each of them against the registry before loading anything.

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
    challenger_version: int | None = None
    """The challenger after this change (None: none)."""
    challenger_mode: Literal["shadow", "canary"] | None = None
    canary_percent: float | None = None
    """The canary's share of rows in percent, in (0, 100] (canary mode only)."""
    history: list[int] = Field(default_factory=list)
    """Sequence numbers of the alias-history entries that record this decision."""
    manifest_sha256: str | None = None
    """The ONNX sha256 the manifest of ``version`` records."""
    request_id: str | None = None
    """The :class:`DeploymentRequest` this decision answers."""
    actor: str = "training"
    """Who asked for the change: a service name or ``user:<name>``."""
    reason: str
    signature: str = ""
    """Hex HMAC-SHA256 of the canonical body under the deploy key."""


class DeploymentRequest(Event):
    """A request to change the registry's aliases or approve a version, on
    ``deployment.requests`` (from ``flywheel`` and monitoring; training decides).

    ``approve`` records an approval of ``version`` (who, why, ``overrides``) without
    deploying it. The serving actions are those of :class:`Deployment`; with
    ``overrides`` they record an approval first. Signed like a deployment.
    """

    model: str
    action: RequestAction
    version: int
    canary_percent: float | None = None
    """Share of rows for ``canary``, in (0, 100]."""
    overrides: list[str] = Field(default_factory=list)
    """Failed gates the requester accepts (``fairness_gap``, ``beats_champion``...);
    ``parity`` can never be overridden."""
    actor: str
    """``user:<name>`` or a service name."""
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    signature: str = ""
    """Hex HMAC-SHA256 of the canonical body under the deploy key."""


# --- serving and monitoring --------------------------------------------------------------


class Prediction(Event):
    """One served row, as monitoring handles it (``id`` is the prediction id).

    On the wire requests' rows travel together, column by column, in a
    :class:`PredictionGroup`; :func:`decode_predictions` unpacks them into these."""

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


PREDICTIONS_SCHEMA_VERSION = 3
"""Wire version of ``predictions``: 1 was one message per row (:class:`Prediction`), 2 one
message per answered request (:class:`PredictionBatch`), 3 is one message per group of
requests a publishing round answered alike, on one partition (:class:`PredictionGroup`).
Monitoring reads all three."""


def prediction_id(key: str, row: int) -> str:
    """The prediction id of row ``row`` of the request whose event key is ``key``."""
    return f"{key}-{row}"


def routing_key(prediction_id: str) -> str:
    """The Kafka key a prediction id's request was published under (the part before the
    last ``-``): feedback re-keyed by it lands on its prediction's partition."""
    return prediction_id.rpartition("-")[0] or prediction_id


class ShadowRows(BaseModel):
    """The shadow model's answers to a request's rows, column by column."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    model_version: int
    data_version: str
    outputs: dict[str, list[Any]]
    """Same layout as :attr:`PredictionBatch.outputs`."""


class _AnsweredRows(Event):
    """What a ``predictions`` message of schema version 2 or 3 holds besides its
    requests: the answering model and all the rows, column by column."""

    model: str
    model_version: int
    data_version: str
    role: Literal["champion", "canary", "shadow", "pinned"] = "champion"
    inputs: dict[str, list[Scalar]]
    """Feature -> one value per row (null: missing)."""
    outputs: dict[str, list[Any]]
    """``label`` and ``probabilities`` (classifiers) or ``prediction`` (regressors) -> one
    value per row."""
    shadow: ShadowRows | None = None
    """The shadow model's answers to the same rows, if one ran."""

    @abstractmethod
    def _row_count(self) -> int:
        """How many rows every column must hold (the subclass's own row counts)."""

    @model_validator(mode="after")
    def _columns_have_every_row(self) -> _AnsweredRows:
        rows = self._row_count()
        columns = [*self.inputs.values(), *self.outputs.values()]
        if self.shadow is not None:
            columns += self.shadow.outputs.values()
        if any(len(c) != rows for c in columns):
            raise ValueError(f"every input and output column must hold {rows} values")
        return self


class PredictionBatch(_AnsweredRows):
    """One answered request on ``predictions`` (schema version 2, superseded by
    :class:`PredictionGroup` and still read): its rows column by column.

    ``id`` is the request key, also the message key; row ``i`` has the prediction id
    ``<id>-<i>`` (:func:`prediction_id`), the id serving returned for that row, and the
    routing key of a prediction id (:func:`routing_key`) gives back ``id``.
    """

    schema_version: Literal[2] = 2
    request_id: str
    """The client's request id (or the request key when the client sent none)."""
    latency_ms: float
    rows: int = Field(ge=1)

    def _row_count(self) -> int:
        return self.rows

    def prediction_ids(self) -> list[str]:
        """The prediction id of every row, in order."""
        return [prediction_id(self.id, i) for i in range(self.rows)]

    def predictions(self) -> list[Prediction]:
        """The request's rows as :class:`Prediction` objects (already validated)."""
        return _predictions(
            self, [(self.id, self.request_id, self.created, self.latency_ms, 0, self.rows)]
        )


def _rows(columns: dict[str, list[Any]], rows: int) -> list[dict[str, Any]]:
    names = list(columns)
    if not names:
        return [{} for _ in range(rows)]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


class RetrainRequest(Event):
    """A request to train a model again, on ``retrain.requests``."""

    model: str
    reason: str
    requested_by: str = "user"
    evidence: dict[str, Any] = Field(default_factory=dict)
    """The figures behind it. ``trigger`` (``drift`` or ``quality``, set by monitoring)
    keys the retrain by (model, dataset version, trigger): on a dataset version a model was
    already trained on it waits for new data. Without it the request is keyed by its
    ``reason``, so a replay trains once."""


class GroupedRequests(BaseModel):
    """The requests of a :class:`PredictionGroup`, one value per request, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    id: list[str] = Field(min_length=1)
    """Request keys: request ``j``'s row ``i`` has the prediction id ``<id[j]>-<i>``."""
    request_id: list[str]
    """The clients' request ids (or the request key when the client sent none)."""
    created: list[float]
    """Unix time each request was answered."""
    latency_ms: list[float]
    rows: list[int]
    """Rows of each request; request ``j``'s rows follow request ``j - 1``'s in every
    column."""
    first_row: list[int] | None = None
    """Index in its request of each request's first row here: set only when a request too
    large for one record travels in parts (each part a request of its own message, its
    row ``i`` the prediction id ``<id[j]>-<first_row[j] + i>``); absent, every request
    starts at row 0."""

    @model_validator(mode="after")
    def _one_value_per_request(self) -> GroupedRequests:
        n = len(self.id)
        columns: list[list[Any]] = [self.request_id, self.created, self.latency_ms, self.rows]
        if self.first_row is not None:
            columns.append(self.first_row)
        if any(len(c) != n for c in columns):
            raise ValueError(f"every request column must hold {n} values")
        if min(self.rows) < 1:
            raise ValueError("every request has at least one row")
        if self.first_row is not None and min(self.first_row) < 0:
            raise ValueError("a request's first row is at index 0 or later")
        return self

    def starts(self) -> list[int]:
        """Each request's first row index (0 unless it travels in parts)."""
        return self.first_row if self.first_row is not None else [0] * len(self.id)


class PredictionGroup(_AnsweredRows):
    """One ``predictions`` message (schema version 3): requests one serving replica
    answered in one publishing round with the same model version, role and shadow, whose
    keys fall on the message's partition; all their rows column by column.

    One message per group rather than per request: encoding the round's rows in one go
    and one Kafka record per group cost a fraction of a record per small request. ``id``
    is the first request's key and the message key; every request key in the group maps
    to the same partition under Kafka's default partitioner, so feedback re-keyed by a
    prediction id's routing key (:func:`routing_key`) meets its prediction.
    """

    schema_version: Literal[3] = PREDICTIONS_SCHEMA_VERSION  # type: ignore[assignment]
    requests: GroupedRequests

    def _row_count(self) -> int:
        return sum(self.requests.rows)

    def prediction_ids(self) -> list[str]:
        """The prediction id of every row, in order."""
        r = self.requests
        pairs = zip(r.id, r.starts(), r.rows, strict=True)
        return [prediction_id(key, i) for key, start, n in pairs for i in range(start, start + n)]

    def predictions(self) -> list[Prediction]:
        """Every request's rows as :class:`Prediction` objects (already validated)."""
        r = self.requests
        created = [datetime.fromtimestamp(c, UTC) for c in r.created]
        return _predictions(
            self,
            list(zip(r.id, r.request_id, created, r.latency_ms, r.starts(), r.rows, strict=True)),
        )


def _predictions(
    event: _AnsweredRows,
    requests: list[tuple[str, str, datetime, float, int, int]],
) -> list[Prediction]:
    """The rows of ``event``'s columns as :class:`Prediction` objects; ``requests`` are
    (key, request id, answered, latency, first row, rows) of the requests the rows belong
    to, in order."""
    rows = sum(r[5] for r in requests)
    inputs = _rows(event.inputs, rows)
    outputs = _rows(event.outputs, rows)
    shadows: list[dict[str, Any] | None] = [None] * rows
    if event.shadow is not None:
        s = event.shadow
        shadows = [
            {"model_version": s.model_version, "data_version": s.data_version, "outputs": o}
            for o in _rows(s.outputs, rows)
        ]
    out: list[Prediction] = []
    row = 0
    for key, request_id, created, latency_ms, start, n in requests:
        for i in range(start, start + n):
            out.append(
                Prediction.model_construct(
                    schema_version=event.schema_version,
                    id=prediction_id(key, i),
                    created=created,
                    model=event.model,
                    model_version=event.model_version,
                    data_version=event.data_version,
                    request_id=request_id,
                    role=event.role,
                    inputs=inputs[row],
                    outputs=outputs[row],
                    shadow=shadows[row],
                    latency_ms=latency_ms,
                )
            )
            row += 1
    return out


def decode_predictions(value: bytes) -> list[Prediction]:
    """The rows of one ``predictions`` message, whichever schema version wrote it: 3 (a
    group of requests), 2 (one request) or 1 (one row), so a rolling upgrade loses none.

    Raises:
        ValidationError: none of the versions (the error against the current one).
    """
    try:
        return PredictionGroup.model_validate_json(value).predictions()
    except ValidationError as err:
        try:
            return PredictionBatch.model_validate_json(value).predictions()
        except ValidationError:
            pass
        try:
            return [Prediction.model_validate_json(value)]
        except ValidationError:
            raise err from None
