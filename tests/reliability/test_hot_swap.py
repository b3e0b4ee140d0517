"""Promotions and rollbacks every second or two under sustained gRPC load.

Serving loads the new version, warms it up and swaps one reference: no request may fail,
and every answer must carry a version that serving could have been answering with at
that moment — the one deployed when the request was sent (or the one before it, while
the swap is still on its way through Kafka), or one deployed while it was in flight.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaProducer

from services.serving.testing import census_rows, feature_matrix, fit_model, register_model
from shared import topics
from shared.events import DeploymentAction
from shared.kafka import client_kwargs
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import DATA, StartService, need_data
from tests.deploying import decide
from tests.reliability.helpers import CENSUS, Answer, Load, metric, report, wait_for

# Promotions and rollbacks under load for a minute: in `make test-reliability`, not `make test`.
pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

# (action, version): champion v1 at start; each step one swap
STEPS: list[tuple[DeploymentAction, int]] = [
    ("promote", 2),
    ("promote", 3),
    ("rollback", 2),
    ("promote", 1),
    ("promote", 3),
    ("rollback", 1),
    ("promote", 2),
    ("rollback", 1),
    ("promote", 3),
    ("promote", 2),
    ("rollback", 3),
    ("promote", 1),
]
INTERVAL_S = 1.5


class Deployed:
    """When each deployment was sent (``start``) and acknowledged by Kafka (``acked``)."""

    def __init__(self, first_version: int) -> None:
        self.start = [float("-inf")]
        self.acked = [float("-inf")]
        self.versions = [str(first_version)]

    def allowed(self, answer: Answer) -> set[str]:
        """Versions serving may have answered ``answer`` with."""
        # the last deployment acknowledged before the request was sent, and the one before it
        k = max(i for i, t in enumerate(self.acked) if t <= answer.sent)
        allowed = set(self.versions[max(0, k - 1) : k + 1])
        # any deployment sent while the request was in flight
        allowed |= {
            v for i, v in enumerate(self.versions) if i > k and self.start[i] <= answer.answered
        }
        return allowed


async def test_promotions_and_rollbacks_under_load_fail_nothing(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str
) -> None:
    need_data("employment_MA_reference.pq")
    registry = Registry(ArtifactStore(store_uri))
    for version, (offset, c) in enumerate([(0, 1.0), (400, 0.05), (800, 0.01)], start=1):
        _, onnx = fit_model(CENSUS, census_rows(DATA, 400, offset=offset), c=c)
        register_model(
            registry,
            CENSUS,
            onnx,
            dataset_version=f"dv{version}",
            alias="champion" if version == 1 else None,
        )
    serving = start_service("serving")
    x = feature_matrix(CENSUS, census_rows(DATA, 8, offset=5000)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    deployed = Deployed(first_version=1)
    producer = AIOKafkaProducer(**client_kwargs(kafka_settings, "test-hot-swap"))
    await producer.start()
    try:
        with Load(serving.ready_info["grpc_address"], [inp], threads=4) as load:
            await asyncio.to_thread(wait_for, lambda: load.count() >= 200, 60, "warm-up load")
            for action, version in STEPS:
                # recorded in the registry as training does, then announced signed
                event = decide(
                    registry, CENSUS, action, version, reason="reliability: hot swap under load"
                )
                deployed.start.append(time.monotonic())
                await producer.send_and_wait(
                    topics.MODELS_DEPLOYMENTS,
                    event.model_dump_json().encode(),
                    key=CENSUS.name.encode(),
                )
                deployed.acked.append(time.monotonic())
                deployed.versions.append(str(version))
                await asyncio.sleep(INTERVAL_S)  # the pace of the swaps, not a readiness wait
            final = deployed.versions[-1]
            settled = load.count()
            await asyncio.to_thread(
                wait_for,
                lambda: sum(a.version == final for a in load.ok[settled:]) >= 200,
                60,
                "answers from the last deployment",
            )
    finally:
        await producer.stop()

    answers, errors = list(load.ok), list(load.errors)
    misattributed = [a for a in answers if a.version not in deployed.allowed(a)]
    served = [pid for a in answers for pid in a.ids]
    swaps = metric(serving, "flywheel_serving_swaps_total")
    report(
        "hot_swap_under_load",
        deployments=len(STEPS),
        interval_s=INTERVAL_S,
        requests=len(answers),
        rows=len(served),
        failed_requests=len(errors),
        misattributed_versions=len(misattributed),
        versions_answering={v: sum(a.version == v for a in answers) for v in ("1", "2", "3")},
        swaps=swaps,
    )
    assert errors == [], errors[:3]
    assert misattributed == [], misattributed[:3]
    assert len(served) == len(set(served))
    assert {a.version for a in answers} == {"1", "2", "3"}
    assert swaps == len(STEPS)
    # the tail of the load is answered by the last deployment alone
    assert {a.version for a in answers[-50:]} == {final}
