"""Kafka wiring: one place builds every client from :class:`KafkaSettings`.

Only behaviour the Kafka protocol documents is relied on, so the same code runs against
the embedded Tansu broker and a real Apache Kafka cluster: topics are created explicitly
(with their partitions and retention) and their partitions found with explicit metadata
requests (:mod:`shared.kafka_protocol`); producers wait for ``acks=all`` and are
idempotent where the broker grants it. Tansu's differences (docs/operations.md) are
handled by recreating topics on (re)connect, never by special-casing the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code
from faststream.kafka import KafkaBroker
from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from shared.events import Event
from shared.kafka_protocol import TopicsUnavailable, fetch_partitions, producer_mode
from shared.settings import KafkaSettings
from shared.topic_specs import RETENTION_MS
from shared.topics import (
    HEADER_CONTENT_TYPE,
    HEADER_SCHEMA_VERSION,
    HEADER_TRACE_ID,
)


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """A TLS context for SSL/SASL_SSL protocols, or None for plaintext."""
    if not settings.security_protocol.endswith("SSL"):
        return None
    ctx = ssl.create_default_context(cafile=settings.ssl_cafile)
    if settings.ssl_certfile:
        ctx.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    return ctx


def client_kwargs(settings: KafkaSettings, client: str) -> dict[str, Any]:
    """Keyword arguments shared by every aiokafka client (producer, consumer, admin).

    Args:
        settings: the Kafka settings.
        client: a short name appended to the client id (e.g. ``ingestion-consumer``).
    """
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.servers,
        "client_id": f"{settings.client_id_prefix}-{client}",
        "request_timeout_ms": settings.request_timeout_ms,
        "security_protocol": settings.security_protocol,
    }
    ctx = ssl_context(settings)
    if ctx is not None:
        kwargs["ssl_context"] = ctx
    if settings.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        )
    return kwargs


def consumer_kwargs(settings: KafkaSettings, client: str, group_id: str | None) -> dict[str, Any]:
    """aiokafka consumer arguments: manual commits, group timeouts from settings."""
    return {
        **client_kwargs(settings, client),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
    }


async def producer_kwargs(settings: KafkaSettings, client: str) -> dict[str, Any]:
    """aiokafka producer arguments: ``acks=all``, idempotent where the broker grants it.

    Whether it does is probed once per cluster (:func:`shared.kafka_protocol.producer_mode`,
    logged as ``kafka.producer_mode``); where it does not (Tansu), sends are plain
    at-least-once and consumers deduplicate by event id and content hash.
    """
    return {
        **client_kwargs(settings, client),
        "acks": "all",
        "enable_idempotence": await producer_mode(settings),
    }


def new_topic(settings: KafkaSettings, name: str) -> NewTopic:
    """The CreateTopics entry for one of Flywheel's topics: partitions, replication and
    its ``retention.ms`` (topics outside the registry keep the broker's default)."""
    configs = {"retention.ms": str(RETENTION_MS[name])} if name in RETENTION_MS else {}
    return NewTopic(name, settings.partitions, settings.replication_factor, topic_configs=configs)


class TopicCreationFailed(KafkaError):  # type: ignore[misc]
    """The broker refused to create a topic (e.g. more replicas than brokers)."""


def faststream_security(settings: KafkaSettings) -> BaseSecurity | None:
    """The FastStream security object matching the settings (None for PLAINTEXT)."""
    ctx = ssl_context(settings)
    use_ssl = ctx is not None
    if settings.security_protocol.startswith("SASL"):
        user = settings.sasl_username or ""
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
        if settings.sasl_mechanism == "SCRAM-SHA-256":
            return SASLScram256(username=user, password=password, ssl_context=ctx, use_ssl=use_ssl)
        if settings.sasl_mechanism == "SCRAM-SHA-512":
            return SASLScram512(username=user, password=password, ssl_context=ctx, use_ssl=use_ssl)
        return SASLPlaintext(username=user, password=password, ssl_context=ctx, use_ssl=use_ssl)
    if use_ssl:
        return BaseSecurity(ssl_context=ctx, use_ssl=True)
    return None


def make_broker(settings: KafkaSettings, client: str, **kwargs: Any) -> KafkaBroker:
    """A FastStream Kafka broker built from settings (security passed through).

    Args:
        settings: the Kafka settings.
        client: client id suffix.
        kwargs: extra ``KafkaBroker`` arguments (e.g. ``linger_ms``).
    """
    return KafkaBroker(
        settings.servers,
        client_id=f"{settings.client_id_prefix}-{client}",
        request_timeout_ms=settings.request_timeout_ms,
        security=faststream_security(settings),
        **kwargs,
    )


def headers(trace_id: str, content_type: str = "application/json") -> dict[str, str]:
    """Standard headers for a message Flywheel publishes."""
    from shared.events import SCHEMA_VERSION

    return {
        HEADER_TRACE_ID: trace_id,
        HEADER_CONTENT_TYPE: content_type,
        HEADER_SCHEMA_VERSION: str(SCHEMA_VERSION),
    }


async def ensure_topics(
    settings: KafkaSettings,
    topics: Iterable[str],
    *,
    attempts: int = 30,
    retry_delay_s: float = 0.5,
) -> list[str]:
    """Create any of ``topics`` that do not exist yet; returns the ones created.

    Idempotent, and retried while the broker is not reachable yet, so a service can
    call it on every (re)connect: Tansu loses its topics when it restarts. The broker's
    per-topic answer is checked (aiokafka returns it without raising; "already exists"
    is fine, anything else raises :class:`TopicCreationFailed`), and the call returns
    only once the created topics have led partitions in the metadata: Kafka creates
    topics asynchronously, so a client right after would otherwise find none.

    Raises:
        ConnectionError: no broker answered in ``attempts`` tries.
        TopicCreationFailed: the broker refused a topic.
    """
    wanted = list(dict.fromkeys(topics))
    last: Exception | None = None
    for _ in range(attempts):
        admin = AIOKafkaAdminClient(**client_kwargs(settings, "admin"))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in wanted if t not in existing]
            if missing:
                response = await admin.create_topics([new_topic(settings, t) for t in missing])
                _check_created(response)
                await fetch_partitions(settings, missing, settings.request_timeout_ms / 1000)
            return missing
        except (KafkaConnectionError, OSError, TopicsUnavailable) as err:
            last = err
            await asyncio.sleep(retry_delay_s)  # broker not up yet: back off and retry
        finally:
            await admin.close()
    raise ConnectionError(f"cannot reach Kafka at {settings.servers}: {last}")


def _check_created(response: Any) -> None:
    """Raise for a topic the CreateTopics response refused (other than "already exists":
    a concurrent service may have created it first)."""
    refused = []
    for topic, code, *rest in response.topic_errors:
        error = for_code(code)
        if code == 0 or error is TopicAlreadyExistsError:
            continue
        message = rest[0] if rest and rest[0] else error.__name__
        refused.append(f"{topic}: {message}")
    if refused:
        raise TopicCreationFailed("; ".join(refused))


class EventPublisher:
    """Publishes events keyed by name, with the standard headers, waiting for ``acks=all``.

    A failed send is retried with back-off after recreating its topic (a restarted
    embedded broker has lost it); the last error is raised after ``attempts`` tries.

    Args:
        settings: Kafka settings.
        client: a short name for the client id (e.g. ``training-producer``).
        log: the service logger (retries are logged).
        attempts: sends tried before the error is raised.
        sign: signs the events that carry a signature (deployments and their requests,
            :class:`shared.signing.Signer`); None publishes them unsigned.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        client: str,
        log: Any,
        attempts: int = 5,
        sign: Callable[[Event], Event] | None = None,
    ):
        self.settings = settings
        self.log = log
        self.attempts = attempts
        self.sign = sign
        self.client = client
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect (idempotent where the broker grants it, see :func:`producer_kwargs`)."""
        self._producer = AIOKafkaProducer(**await producer_kwargs(self.settings, self.client))
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._producer is not None:
            await self._producer.stop()

    async def publish(self, topic: str, key: str, event: Event) -> None:
        """Send ``event`` to ``topic`` and wait for the broker's acknowledgement."""
        if self.sign is not None:
            event = self.sign(event)
        if self._producer is None:
            raise RuntimeError("EventPublisher.publish before start")
        value = event.model_dump_json().encode()
        hdrs = [(k, v.encode()) for k, v in headers(event.id).items()]
        for attempt in range(1, self.attempts + 1):
            try:
                await self._producer.send_and_wait(topic, value, key=key.encode(), headers=hdrs)
                return
            except KafkaError as err:
                if attempt == self.attempts:
                    raise
                self.log.warning("publish.retry", topic=topic, attempt=attempt, error=repr(err))
                await asyncio.sleep(0.5 * 2**attempt)  # back-off between attempts
                with contextlib.suppress(ConnectionError):
                    await ensure_topics(self.settings, [topic], attempts=5)


class TopicWatch:
    """Recreates a service's missing topics, at most once every ``every_s`` seconds.

    A restarted embedded broker has forgotten every topic, and a consumer does not
    notice: it just fetches nothing. Calling :meth:`check` while idle brings the topics
    back (creating them is idempotent on any broker).

    Args:
        settings: the Kafka settings.
        topics: the topics this service consumes or produces.
        every_s: the least time between two checks.
        log: the service logger (``topics.recreated`` / ``topics.check_failed``).
    """

    def __init__(self, settings: KafkaSettings, topics: Iterable[str], every_s: float, log: Any):
        self.settings = settings
        self.topics = list(topics)
        self.every_s = every_s
        self.log = log
        self._checked = time.monotonic()

    async def check(self) -> list[str]:
        """Recreate missing topics if the last check is old enough; the ones created."""
        if time.monotonic() - self._checked < self.every_s:
            return []
        self._checked = time.monotonic()
        try:
            created = await ensure_topics(self.settings, self.topics, attempts=1)
        except ConnectionError as err:
            self.log.warning("topics.check_failed", error=str(err))
            return []
        if created:
            self.log.warning("topics.recreated", topics=created)
        return created


async def describe_topics(settings: KafkaSettings) -> dict[str, int]:
    """Topic name -> partition count, for every non-internal topic."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings, "admin"))
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if not t.startswith("__")]
    finally:
        await admin.close()
    if not names:
        return {}
    found = await fetch_partitions(settings, names, settings.request_timeout_ms / 1000)
    return {name: len(parts) for name, parts in found.items()}


async def topic_retention(settings: KafkaSettings, names: Iterable[str]) -> dict[str, int | None]:
    """Topic -> its ``retention.ms`` as the broker reports it (DescribeConfigs); None
    when the broker does not report one or may not be asked."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    wanted = list(names)
    if not wanted:
        return {}
    out: dict[str, int | None] = dict.fromkeys(wanted)
    admin = AIOKafkaAdminClient(**client_kwargs(settings, "admin"))
    await admin.start()
    try:
        # Every config of each topic: Tansu drops the connection when config names are given.
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
        responses = await admin.describe_configs(resources)
    except KafkaError:
        return out  # not allowed to describe configs (ACLs): retention unknown, not an error
    finally:
        await admin.close()
    for response in responses:
        for error, _message, _kind, name, entries, *_ in response.resources:
            for entry in entries if error == 0 else []:
                if entry[0] == "retention.ms" and entry[1] is not None:
                    out[name] = int(entry[1])
    return out


async def consumer_lag(settings: KafkaSettings) -> dict[str, dict[str, int]]:
    """Consumer group -> topic -> lag (end offset minus committed offset, summed).

    Committed offsets are asked for explicit partitions (every partition of every
    non-internal topic), which every broker answers; partitions a group never
    committed (offset -1) are left out.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    admin = AIOKafkaAdminClient(**client_kwargs(settings, "admin"))
    consumer = AIOKafkaConsumer(**client_kwargs(settings, "lag"))
    await admin.start()
    await consumer.start()
    try:
        names = [t for t in await admin.list_topics() if not t.startswith("__")]
        timeout_s = settings.request_timeout_ms / 1000
        found = await fetch_partitions(settings, names, timeout_s) if names else {}
        partitions = [TopicPartition(t, p) for t, ps in found.items() for p in ps]
        ends = await consumer.end_offsets(partitions) if partitions else {}
        lag: dict[str, dict[str, int]] = {}
        for group, _protocol in await admin.list_consumer_groups():
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            per_topic: dict[str, int] = {}
            for tp, meta in committed.items():
                if meta.offset < 0:
                    continue
                behind = max(0, ends.get(tp, 0) - meta.offset)
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + behind
            if per_topic:
                lag[group] = per_topic
        return lag
    finally:
        await consumer.stop()
        await admin.close()
