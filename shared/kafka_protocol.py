"""What Flywheel asks of a broker by explicit request, with the answers Kafka documents.

Two questions are answered here, each with one request whose meaning the Kafka protocol
fixes, so the answer is the same on Apache Kafka and on the embedded Tansu broker:

- *Which partitions does a topic have, and do they have leaders?* A Metadata request
  naming the topics, with ``allow_auto_topic_creation=False``. Kafka answers a request
  with an empty topic list with no topics at all (Tansu answers it with every topic),
  and aiokafka's ``AIOKafkaConsumer.topics()`` fills a throw-away cluster view, not the
  client's own: neither may be used to find a topic's partitions. A topic that does not
  exist is reported, never created (Tansu and a Kafka with ``auto.create.topics.enable``
  would create it with the broker's default partition count).
- *May producers be idempotent?* ApiVersions must list InitProducerId and an
  InitProducerId request (no transactional id) must grant a producer id. Tansu lists
  the API but answers with an error, so producers there are plain ``acks=all``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.admin import ApiVersionRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.transaction import InitProducerIdRequest

from shared.settings import KafkaSettings

INIT_PRODUCER_ID_API_KEY = 22
"""The Kafka protocol's API key of InitProducerId."""

_log = structlog.get_logger("kafka")


class TopicsUnavailable(KafkaError):  # type: ignore[misc]
    """Topics that have no usable partitions after the deadline; ``problems`` says why."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        detail = "; ".join(f"{t}: {why}" for t, why in sorted(problems.items()))
        super().__init__(f"topics unavailable: {detail}")


def metadata_request(topics: Sequence[str]) -> MetadataRequest:
    """A Metadata request for exactly ``topics``, which never creates a topic."""
    if not topics:
        # An empty list means "no topics" to Kafka and "every topic" to Tansu.
        raise ValueError("name the topics: an empty Metadata request has no portable answer")
    return MetadataRequest(list(topics), allow_auto_topic_creation=False)


def usable_partitions(
    cluster: ClusterMetadata, topics: Sequence[str]
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Partitions of each topic in ``cluster`` if all have a leader; else why not.

    Returns:
        (topic -> sorted partition ids, topic -> problem) for the topics asked about.
    """
    found: dict[str, list[int]] = {}
    problems: dict[str, str] = {}
    for topic in topics:
        partitions = cluster.partitions_for_topic(topic)
        if partitions is None:
            problems[topic] = "not in the metadata (unknown topic, or being created)"
        elif not partitions:
            problems[topic] = "has no partitions"
        elif (cluster.available_partitions_for_topic(topic) or set()) != partitions:
            problems[topic] = "some partitions have no leader yet"
        else:
            found[topic] = sorted(partitions)
    return found, problems


async def wait_for_partitions(
    client: AIOKafkaClient,
    topics: Sequence[str],
    timeout_s: float,
    retry_s: float = 0.2,
) -> dict[str, list[int]]:
    """Ask a bootstrapped client's brokers for ``topics`` until each has led partitions.

    Args:
        client: a started (bootstrapped) aiokafka client.
        topics: the topics needed.
        timeout_s: the deadline; :class:`TopicsUnavailable` is raised after it.
        retry_s: pause between two requests (a just-created topic gets leaders shortly).
    """
    request = metadata_request(topics)
    deadline = time.monotonic() + timeout_s
    while True:
        node = client.get_random_node()
        try:
            if node is None:
                raise KafkaError("no broker in the client's metadata")
            response = await client.send(node, request)
        except (TimeoutError, KafkaError, OSError) as err:
            problems = dict.fromkeys(topics, f"metadata request failed: {err!r}")
        else:
            cluster = ClusterMetadata()
            cluster.update_metadata(response)
            found, problems = usable_partitions(cluster, topics)
            if not problems:
                return found
        if time.monotonic() + retry_s > deadline:
            raise TopicsUnavailable(problems)
        await asyncio.sleep(retry_s)  # back-off between requests, bounded by the deadline


def metadata_client(settings: KafkaSettings, client: str) -> AIOKafkaClient:
    """A bare aiokafka client for explicit requests (call ``bootstrap()`` first)."""
    from shared.kafka import client_kwargs

    return AIOKafkaClient(**client_kwargs(settings, client))


async def fetch_partitions(
    settings: KafkaSettings, topics: Sequence[str], timeout_s: float
) -> dict[str, list[int]]:
    """Partitions of ``topics`` (each with a leader), retried until ``timeout_s``.

    Raises:
        TopicsUnavailable: a topic is missing or leaderless at the deadline, or no
            broker answered.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        client = metadata_client(settings, "metadata")
        try:
            await client.bootstrap()
            return await wait_for_partitions(client, topics, deadline - time.monotonic())
        except TopicsUnavailable:
            raise
        except (KafkaError, OSError) as err:
            if time.monotonic() + 0.5 > deadline:
                raise TopicsUnavailable(dict.fromkeys(topics, f"no broker: {err!r}")) from err
            await asyncio.sleep(0.5)  # broker not reachable yet: back off, then retry
        finally:
            await client.close()


async def idempotence_supported(client: AIOKafkaClient) -> tuple[bool, str]:
    """Whether the broker grants idempotent producers, and the evidence.

    Args:
        client: a started (bootstrapped) aiokafka client.
    """
    node = client.get_random_node()
    if node is None:
        return False, "no broker in the client's metadata"
    versions = await client.send(node, ApiVersionRequest())
    offered = {api_key for api_key, *_ in versions.api_versions}
    if INIT_PRODUCER_ID_API_KEY not in offered:
        return False, "ApiVersions does not list InitProducerId"
    granted = await client.send(
        node, InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000)
    )
    if granted.error_code == 0 and granted.producer_id >= 0:
        return True, "InitProducerId granted a producer id"
    return False, f"InitProducerId answered {for_code(granted.error_code).__name__}"


_IDEMPOTENT: dict[str, bool] = {}
"""Bootstrap servers -> idempotence decided; probed once per process and cluster."""


async def producer_mode(settings: KafkaSettings) -> bool:
    """True when producers to ``settings``' cluster may enable idempotence (probed once).

    A broker that cannot be asked (unreachable right now) gets plain ``acks=all``
    producers and is asked again by the next producer.
    """
    servers = settings.servers
    if servers in _IDEMPOTENT:
        return _IDEMPOTENT[servers]
    client = metadata_client(settings, "probe")
    try:
        await client.bootstrap()
        supported, reason = await idempotence_supported(client)
    except (TimeoutError, KafkaError, OSError) as err:
        _log.warning("kafka.producer_probe_failed", servers=servers, error=repr(err))
        return False
    finally:
        await client.close()
    _IDEMPOTENT[servers] = supported
    _log.info("kafka.producer_mode", servers=servers, idempotent=supported, reason=reason)
    return supported
