"""Tests standing in for training, the registry's one writer: record a decision through
training's own :func:`services.training.deploy.record_decision`, sign it with the test
stack's key, publish it. Forged events are built by hand beside these."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from services.training.deploy import record_decision
from shared import topics
from shared.contract import Contract
from shared.events import Deployment, DeploymentRequest, Event, RequestAction
from shared.kafka import client_kwargs
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.signing import sign
from tests.conftest import DEPLOY_KEY


def request(
    contract: Contract, action: RequestAction, version: int, **fields: Any
) -> DeploymentRequest:
    """A signed request as ``flywheel`` would publish it."""
    body = {"actor": "user:test", "reason": "test"} | fields
    return sign(
        DeploymentRequest(model=contract.name, action=action, version=version, **body), DEPLOY_KEY
    )


def decide(
    registry: Registry, contract: Contract, action: RequestAction, version: int, **fields: Any
) -> Deployment:
    """Record ``action`` of ``version`` in the registry as training does; the signed
    deployment that announces it."""
    deployment = record_decision(registry, contract, request(contract, action, version, **fields))
    assert deployment is not None, f"{action} v{version} moved no alias"
    return sign(deployment, DEPLOY_KEY)


async def publish(settings: KafkaSettings, topic: str, events: list[Event]) -> None:
    """Publish ``events`` on ``topic`` keyed by model, waiting for each acknowledgement."""
    producer = AIOKafkaProducer(**client_kwargs(settings, "test-deployments"), acks="all")
    await producer.start()
    try:
        for event in events:
            key = str(getattr(event, "model", "")).encode()
            await producer.send_and_wait(topic, event.model_dump_json().encode(), key=key)
    finally:
        await producer.stop()


async def deploy(settings: KafkaSettings, events: list[Deployment]) -> None:
    """Publish deployments on ``models.deployments``."""
    await publish(settings, topics.MODELS_DEPLOYMENTS, list(events))
