"""Settings: global variable names, service prefixes, Kafka security pass-through."""

from __future__ import annotations

import pytest
from faststream.security import SASLPlaintext, SASLScram512

from services.ingestion.settings import IngestionSettings
from services.serving.settings import ServingSettings
from shared.kafka import client_kwargs, consumer_kwargs, faststream_security
from shared.settings import DEFAULT_BOOTSTRAP, KafkaSettings


def test_defaults_and_fixed_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    s = IngestionSettings()
    assert s.kafka.servers == DEFAULT_BOOTSTRAP
    assert s.store == "file://./var/store"
    assert s.contracts == "./contracts"
    assert s.metrics_port == 9101
    assert ServingSettings().metrics_port == 9104


def test_global_names_and_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("FLYWHEEL_STORE", "s3://bucket/flywheel")
    monkeypatch.setenv("FLYWHEEL_CONTRACTS", "/etc/contracts")
    monkeypatch.setenv("FLYWHEEL_INGESTION_METRICS_PORT", "9999")
    s = IngestionSettings()
    assert s.kafka.servers == "k1:9092,k2:9092"
    assert s.store == "s3://bucket/flywheel"
    assert s.contracts == "/etc/contracts"
    assert s.metrics_port == 9999
    # another service's prefix does not leak in
    assert ServingSettings().metrics_port == 9104


def test_sasl_settings_reach_every_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "flywheel")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    kafka = KafkaSettings()
    kw = consumer_kwargs(kafka, "x", "g")
    assert kw["security_protocol"] == "SASL_PLAINTEXT"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "flywheel"
    assert kw["sasl_plain_password"] == "s3cret"
    assert kw["enable_auto_commit"] is False
    assert isinstance(faststream_security(kafka), SASLScram512)
    # the secret never shows in the settings' repr (and so never in logs)
    assert "s3cret" not in repr(kafka)


def test_plain_sasl_and_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u")
    assert isinstance(faststream_security(kafka), SASLPlaintext)
    plain = KafkaSettings()
    assert faststream_security(plain) is None
    assert "sasl_mechanism" not in client_kwargs(plain, "x")
