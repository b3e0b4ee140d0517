"""The Kafka protocol answers Flywheel relies on, pinned with aiokafka's own objects.

:class:`KafkaModel` answers requests the way Apache Kafka documents them (a Metadata
request with an empty topic list returns no topics, a null list every topic, named
topics only those; nothing is auto-created when ``allow_auto_topic_creation`` is
false), with real aiokafka request and response structs. :class:`ModelClient` is a real
``AIOKafkaClient`` whose connections are answered by that model, so aiokafka's own
bootstrap, ``fetch_all_metadata`` and ``ClusterMetadata`` code runs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import TopicAlreadyExistsError, UnknownError
from aiokafka.protocol.admin import (
    ApiVersionRequest,
    ApiVersionResponse_v0,
    CreateTopicsResponse_v3,
)
from aiokafka.protocol.metadata import MetadataRequest, MetadataResponse_v5
from aiokafka.protocol.transaction import InitProducerIdRequest, InitProducerIdResponse_v0

from shared import kafka as shared_kafka
from shared import kafka_protocol, topics
from shared.kafka_protocol import (
    TopicsUnavailable,
    idempotence_supported,
    metadata_request,
    usable_partitions,
    wait_for_partitions,
)
from shared.settings import KafkaSettings
from shared.topic_specs import FOREVER, RETENTION_MS, TOPIC_SPECS

NODE = 1
LEADER_NOT_AVAILABLE = 5
UNKNOWN_TOPIC = 3
KAFKA_3_9_METADATA = (0, 12)  # Metadata versions an Apache Kafka 3.9 broker offers


@dataclass
class KafkaModel:
    """A one-broker cluster answering as Apache Kafka documents.

    Args:
        topics: topic -> leader per partition (-1: no leader yet).
        auto_create: the broker's ``auto.create.topics.enable``.
        init_producer_id_error: error code InitProducerId answers (0 grants an id).
        offers_init_producer_id: whether ApiVersions lists InitProducerId.
    """

    topics: dict[str, list[int]] = field(default_factory=dict)
    auto_create: bool = False
    init_producer_id_error: int = 0
    offers_init_producer_id: bool = True
    requests: list[Any] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    leaders_after: dict[str, int] = field(default_factory=dict)
    """topic -> Metadata requests answered before its partitions get a leader."""

    def answer(self, request: Any) -> Any:
        if isinstance(request, MetadataRequest):
            return self._metadata(request.prepare({3: KAFKA_3_9_METADATA}))
        if isinstance(request, ApiVersionRequest):
            offered = [(3, *KAFKA_3_9_METADATA), (18, 0, 3)]
            if self.offers_init_producer_id:
                offered.append((kafka_protocol.INIT_PRODUCER_ID_API_KEY, 0, 5))
            return ApiVersionResponse_v0(0, offered)
        if isinstance(request, InitProducerIdRequest):
            self.requests.append(request)
            granted = self.init_producer_id_error == 0
            return InitProducerIdResponse_v0(
                0, self.init_producer_id_error, 4000 if granted else -1, 0 if granted else -1
            )
        raise AssertionError(f"the model does not answer {request!r}")

    def _metadata(self, struct: Any) -> MetadataResponse_v5:
        self.requests.append(struct)
        # A null list asks for every topic, an empty one for none at all.
        names = list(self.topics) if struct.topics is None else list(struct.topics)
        answered = []
        for name in names:
            if name not in self.topics and self.auto_create and struct.allow_auto_topic_creation:
                self.topics[name] = [-1]
                self.created.append(name)
            if name not in self.topics:
                answered.append((UNKNOWN_TOPIC, name, False, []))
                continue
            if self.leaders_after.get(name, 0) > 0:
                self.leaders_after[name] -= 1
                leaders = [-1] * len(self.topics[name])
            else:
                leaders = self.topics[name]
            answered.append(
                (
                    0,
                    name,
                    False,
                    [(0, p, leader, [NODE], [NODE], []) for p, leader in enumerate(leaders)],
                )
            )
        return MetadataResponse_v5(0, [(NODE, "kafka", 9092, None)], "cluster", NODE, answered)


class _Conn:
    def __init__(self, model: KafkaModel):
        self.model = model

    async def send(self, request: Any) -> Any:
        return self.model.answer(request)

    def connected(self) -> bool:
        return True

    def close(self, reason: Any = None) -> None:
        """Nothing to release."""


class ModelClient(AIOKafkaClient):  # type: ignore[misc]
    """A real aiokafka client whose connections are answered by a :class:`KafkaModel`."""

    def __init__(self, model: KafkaModel, **kwargs: Any):
        super().__init__(bootstrap_servers="kafka:9092", **kwargs)
        self.model = model

    async def bootstrap(self) -> None:
        # aiokafka's own bootstrap request: a Metadata request with an empty topic list.
        self.cluster.update_metadata(self.model.answer(MetadataRequest([])))

    async def _get_conn(self, node_id: Any, *, group: Any = None, no_hint: bool = False) -> _Conn:
        return _Conn(self.model)

    async def send(self, node_id: Any, request: Any, *, group: Any = None) -> Any:
        return self.model.answer(request)

    async def close(self) -> None:
        """Nothing to release."""


def census_topics(leader: int = NODE) -> dict[str, list[int]]:
    return {topics.MODELS_DEPLOYMENTS: [leader] * 3, topics.PREDICTIONS: [leader] * 3}


async def test_bootstrap_leaves_the_clients_metadata_without_topics() -> None:
    """Why ``consumer.topics()`` + ``partitions_for_topic()`` failed on Apache Kafka."""
    client = ModelClient(KafkaModel(census_topics()))
    await client.bootstrap()
    assert client.cluster.partitions_for_topic(topics.MODELS_DEPLOYMENTS) is None
    # topics() is fetch_all_metadata(): a null topic list, answered into a *new* view...
    everything = await client.fetch_all_metadata()
    assert everything.partitions_for_topic(topics.MODELS_DEPLOYMENTS) == {0, 1, 2}
    # ... and the client's own view (what partitions_for_topic reads) still has nothing.
    assert client.cluster.partitions_for_topic(topics.MODELS_DEPLOYMENTS) is None


async def test_partitions_come_from_an_explicit_request_for_the_topic() -> None:
    model = KafkaModel(census_topics())
    client = ModelClient(model)
    await client.bootstrap()
    found = await wait_for_partitions(client, [topics.MODELS_DEPLOYMENTS], timeout_s=1.0)
    assert found == {topics.MODELS_DEPLOYMENTS: [0, 1, 2]}
    request = model.requests[-1]
    assert request.topics == [topics.MODELS_DEPLOYMENTS]
    assert request.allow_auto_topic_creation is False


async def test_a_just_created_topic_is_waited_for_until_its_partitions_have_leaders() -> None:
    model = KafkaModel(census_topics(), leaders_after={topics.MODELS_DEPLOYMENTS: 2})
    client = ModelClient(model)
    await client.bootstrap()
    found = await wait_for_partitions(
        client, [topics.MODELS_DEPLOYMENTS], timeout_s=5.0, retry_s=0.01
    )
    assert found[topics.MODELS_DEPLOYMENTS] == [0, 1, 2]
    assert len(model.requests) == 1 + 3  # bootstrap, two leaderless answers, then led


async def test_a_missing_topic_is_reported_after_the_deadline_and_never_created() -> None:
    model = KafkaModel(census_topics(), auto_create=True)
    client = ModelClient(model)
    await client.bootstrap()
    with pytest.raises(TopicsUnavailable) as caught:
        await wait_for_partitions(client, ["not.there"], timeout_s=0.1, retry_s=0.02)
    assert "not.there" in caught.value.problems
    assert model.created == [], "a metadata request must not create the topic"


def test_usable_partitions_names_what_is_wrong_with_each_topic() -> None:
    model = KafkaModel({"led": [NODE, NODE], "leaderless": [NODE, -1]})
    cluster = ClusterMetadata()
    cluster.update_metadata(model.answer(metadata_request(["led", "leaderless", "absent"])))
    found, problems = usable_partitions(cluster, ["led", "leaderless", "absent"])
    assert found == {"led": [0, 1]}
    assert set(problems) == {"leaderless", "absent"}
    assert "leader" in problems["leaderless"]


def test_an_empty_metadata_request_is_refused() -> None:
    # Kafka: no topics; Tansu: every topic. Neither answer may be relied on.
    with pytest.raises(ValueError, match="empty"):
        metadata_request([])


@pytest.mark.parametrize(
    ("offered", "error", "expected", "why"),
    [
        (True, 0, True, "granted"),
        (True, UnknownError.errno, False, "UnknownError"),  # what Tansu answers
        (False, 0, False, "does not list"),
    ],
)
async def test_idempotence_is_used_only_when_init_producer_id_grants_an_id(
    offered: bool, error: int, expected: bool, why: str
) -> None:
    model = KafkaModel(
        census_topics(), init_producer_id_error=error, offers_init_producer_id=offered
    )
    client = ModelClient(model)
    await client.bootstrap()
    supported, reason = await idempotence_supported(client)
    assert supported is expected
    assert why in reason
    if offered:
        [probe] = [r for r in model.requests if isinstance(r, InitProducerIdRequest)]
        assert probe._transactional_id is None  # idempotence without transactions


async def test_producer_kwargs_follow_the_probe_once_per_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = KafkaModel(census_topics())
    made: list[ModelClient] = []

    def client_for(settings: KafkaSettings, client: str) -> ModelClient:
        made.append(ModelClient(model))
        return made[-1]

    monkeypatch.setattr(kafka_protocol, "metadata_client", client_for)
    monkeypatch.setattr(kafka_protocol, "_IDEMPOTENT", {})
    settings = KafkaSettings(bootstrap_servers="kafka:9092")
    first = await shared_kafka.producer_kwargs(settings, "x")
    second = await shared_kafka.producer_kwargs(settings, "y")
    assert first["acks"] == second["acks"] == "all"
    assert first["enable_idempotence"] is second["enable_idempotence"] is True
    assert len(made) == 1, "the broker is probed once"


def test_every_topic_is_created_with_its_retention() -> None:
    settings = KafkaSettings(partitions=6, replication_factor=3)
    for spec in TOPIC_SPECS:
        new = shared_kafka.new_topic(settings, spec.name)
        assert (new.num_partitions, new.replication_factor) == (6, 3)
        assert new.topic_configs == {"retention.ms": str(spec.retention_ms)}
    assert RETENTION_MS[topics.MODELS_DEPLOYMENTS] == FOREVER  # the decision record
    assert set(RETENTION_MS) == set(topics.ALL_TOPICS)


def test_a_refused_topic_creation_raises_but_already_exists_does_not() -> None:
    ok = CreateTopicsResponse_v3(0, [("a", 0, None), ("b", TopicAlreadyExistsError.errno, "x")])
    shared_kafka._check_created(ok)
    refused = CreateTopicsResponse_v3(
        0, [("c", 38, "Replication factor: 3 larger than available brokers: 1.")]
    )
    with pytest.raises(shared_kafka.TopicCreationFailed, match="larger than available brokers"):
        shared_kafka._check_created(refused)


async def test_wait_for_partitions_gives_up_when_no_broker_answers() -> None:
    class Silent(ModelClient):
        async def send(self, node_id: Any, request: Any, *, group: Any = None) -> Any:
            raise TimeoutError

    client = Silent(KafkaModel(census_topics()))
    await client.bootstrap()
    with pytest.raises(TopicsUnavailable, match="metadata request failed"):
        await wait_for_partitions(client, [topics.PREDICTIONS], timeout_s=0.05, retry_s=0.01)
