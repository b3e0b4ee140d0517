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
        "the first request's key (every request key in the message maps to its partition)",
        events.PredictionGroup,
        "serving",
        "monitoring",
        "answered requests (schema version 3): a publishing round's requests on one "
        "partition with the same model version, role and shadow, rows column by column; "
        "request `j`'s row `i` has the prediction id `<requests.id[j]>-<first_row[j] + i>` "
        "(`first_row` only on the parts of a request too large for one record)",
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


DESIGN_NOTES: tuple[tuple[str, str], ...] = (
    (
        "Design: the prediction stream and the label join",
        """
**Requests grouped per partition.** Serving publishes its answered requests in rounds
(every `FLYWHEEL_SERVING_PRODUCER_LINGER_MS`, or as soon as `EVENT_BATCH_ROWS` rows
wait); a round's requests whose keys map to the same partition and that share model
version, role and shadow travel as one
`predictions` message (`PredictionGroup`, `schema_version` 3, at most 32 requests and
512 rows, under 1 MiB): the requests' keys, client request ids, answer times, latencies
and row counts as columns, and all their rows column by column (`inputs` feature ->
values, `outputs` output -> values, the shadow's outputs likewise), request after
request. Request `j`'s row `i` has the prediction id `<requests.id[j]>-<i>`, the one
serving returned, so every row stays joinable and citable on its own (`flywheel lineage
<prediction id>`). A request whose rows encode over a record's limit travels in parts,
each a request of its own message under the same key, with `requests.first_row` giving
each part's first row index (its rows' ids are `<requests.id[j]>-<first_row[j] + i>`); a
single row over the limit is dropped, counted and logged (no record could carry it).
One message per group instead of one per request
cuts a one-row request's encoding from about 20 to 6 microseconds on the 2-core
benchmark machine (one encoder call and one Kafka record for the group). Versions 2
(one `PredictionBatch` per request) and 1 (one `Prediction` per row, keyed by model
name) are still decoded by monitoring, so a rolling upgrade loses no row (version 1's
labels meet their predictions only while monitoring runs one replica).
Sends wait for `acks=all`; a failed send is retried; a full buffer makes requests wait
(bounded by `FLYWHEEL_SERVING_EVENT_BLOCK_MS`) and only then drops, counted and logged.

**Co-partitioned keys.** Each request goes to the partition Kafka's default (murmur2)
partitioner gives its key, which is also the routing key of each of its prediction ids
(the part before the last `-`); the message key is its first request's key. Users write `feedback`
with any key; monitoring's router re-publishes each record unchanged on
`feedback.routed` keyed by the routing key of its `prediction_id`, so Kafka's default
partitioner puts a label on the same partition number as its prediction. Both topics
have the same partition count, and monitoring's stream consumer uses the range assignor,
so partition `k` of both goes to one replica: a prediction and its label always meet.

**Durable join and window state.** At every checkpoint monitoring flushes the
prediction log, writes partition `k`'s state - the join's waiting predictions and held
labels, `k`'s share of the quality, shadow-agreement and open drift windows, and the
models' trigger state - as an immutable object named by the two topics' next offsets
(`monitoring/state/<group>/<k>/<offsets>.json` in the artifact store) and then commits
those offsets. The committed offsets point at the snapshot: a replica that is assigned
`k` after a restart (SIGKILL included) or a rebalance restores exactly the state those
offsets describe and replays what follows, so live metrics after a restart equal those
of a run without it. Windows are per replica (the union of its partitions' shares);
counters add up across replicas. Details and costs: docs/operations.md.

**The prediction log once per prediction.** Offsets are committed after the log flush,
so a crash replays unwritten rows rather than losing them; a crash between a flush and
its commit writes replayed rows again in another object, and the log's reader
(`services.monitoring.predlog.read_log`, `flywheel lineage`) keeps each prediction once.
""",
    ),
)
"""Prose sections of docs/topics.md: the design behind the keys and bodies above."""
