"""Settings every service shares: Kafka connection, artifact store, contracts, logging.

Each service subclasses :class:`ServiceSettings` with its own env prefix
(``FLYWHEEL_<SERVICE>_``). A few variables are global by design and keep their
fixed names whatever the prefix: ``KAFKA_*``, ``FLYWHEEL_STORE``,
``FLYWHEEL_CONTRACTS``, ``FLYWHEEL_LOG_FORMAT``, ``FLYWHEEL_LOG_LEVEL`` and
``FLYWHEEL_DEPLOY_KEY`` / ``FLYWHEEL_DEPLOY_KEY_FILE``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


class KafkaSettings(BaseSettings):
    """How to reach Kafka. Every client (FastStream, aiokafka, admin) is built from this."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str | None = None
    """Comma-separated host:port list. Unset means the embedded broker on 127.0.0.1:9092."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka security protocol, passed through to every client."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism when the protocol is SASL_*."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password; never logged."""
    ssl_cafile: str | None = None
    """CA bundle that signed the brokers' certificates."""
    ssl_certfile: str | None = None
    """Client certificate for mutual TLS."""
    ssl_keyfile: str | None = None
    """Client private key for mutual TLS."""
    partitions: int = Field(3, ge=1)
    """Partitions for topics Flywheel creates at start-up."""
    replication_factor: int = Field(1, ge=1)
    """Replication factor for topics Flywheel creates (3 on a production cluster)."""
    session_timeout_ms: int = Field(10_000, ge=1_000)
    """Consumer group session timeout. Tansu joins a group in about half of it:
    keep it short in tests."""
    heartbeat_interval_ms: int = Field(1_000, ge=100)
    """Consumer heartbeat interval; must be well under the session timeout."""
    request_timeout_ms: int = Field(30_000, ge=1_000)
    """Client request timeout."""
    client_id_prefix: str = "flywheel"
    """Prefix of every client id, so brokers can tell Flywheel's clients apart."""

    @property
    def servers(self) -> str:
        """The bootstrap servers to use, falling back to the embedded broker's address."""
        return self.bootstrap_servers or DEFAULT_BOOTSTRAP


class ServiceSettings(BaseSettings):
    """Common settings; each service subclasses this with its own ``env_prefix``."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore", populate_by_name=True)

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    """Kafka connection (``KAFKA_*`` variables)."""
    store: str = Field(
        "file://./var/store", validation_alias=AliasChoices("store", "FLYWHEEL_STORE")
    )
    """Artifact store URI: ``file://PATH`` or ``s3://bucket/prefix``."""
    contracts: str = Field(
        "./contracts", validation_alias=AliasChoices("contracts", "FLYWHEEL_CONTRACTS")
    )
    """Folder of data contract YAML files."""
    log_format: Literal["json", "console"] = Field(
        "json", validation_alias=AliasChoices("log_format", "FLYWHEEL_LOG_FORMAT")
    )
    """JSON lines (default) or a readable console format."""
    log_level: str = Field("INFO", validation_alias=AliasChoices("log_level", "FLYWHEEL_LOG_LEVEL"))
    """Log level name."""
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    """The asyncio event loop implementation: the standard library's, or uvloop's (libuv;
    serving's default, see :class:`services.serving.settings.ServingSettings`)."""
    deploy_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("deploy_key", "FLYWHEEL_DEPLOY_KEY")
    )
    """HMAC-SHA256 key that signs deployments and deployment requests (at least 16
    bytes; never logged). Every service and the ``flywheel`` CLI of one stack share it."""
    deploy_key_file: str | None = Field(
        None, validation_alias=AliasChoices("deploy_key_file", "FLYWHEEL_DEPLOY_KEY_FILE")
    )
    """File holding the deploy key (a mounted secret); used when ``deploy_key`` is unset."""
    metrics_port: int = Field(0, ge=0, le=65535)
    """Port of the Prometheus metrics endpoint (0 picks a free one)."""
    metrics_host: str = "0.0.0.0"
    """Interface the metrics endpoint listens on."""
