"""Serving serves only what the registry decided, as a real process on a real broker.

Forged ``models.deployments`` events (a bad signature, a parity-failed version, a
version training refused, an invalid canary share) are refused, counted by reason, and
change nothing; after a SIGKILL serving comes back with exactly the registry's
champion, canary and share, and ``flywheel models`` says the same as ModelMetadata.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from services.serving.testing import census_rows, fit_model, register_model
from shared.cli.main import app
from shared.contract import Contract, load_contract
from shared.events import Deployment
from shared.protogen import inference_pb2 as pb
from shared.protogen import inference_pb2_grpc as pb_grpc
from shared.registry import Gate, ModelManifest, Registry
from shared.settings import KafkaSettings
from shared.signing import sign
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, DATA, DEPLOY_KEY, StartService, need_data
from tests.deploying import decide, deploy

pytestmark = pytest.mark.integration

MODEL = "census_employment"


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract(CONTRACTS / f"{MODEL}.yaml")


@pytest.fixture(scope="module")
def onnx(contract: Contract) -> list[bytes]:
    need_data("employment_MA_reference.pq")
    return [
        fit_model(contract, census_rows(DATA, 300, offset=o), c=c)[1]
        for o, c in ((0, 1.0), (300, 0.05))
    ]


def seeded(
    store_uri: str, contract: Contract, onnx: list[bytes]
) -> tuple[Registry, list[ModelManifest]]:
    """v1 champion, v2 a good candidate, v3 failed parity, v4 failed a fairness gate."""
    registry = Registry(ArtifactStore(store_uri))
    v1 = register_model(registry, contract, onnx[0], dataset_version="d1")
    v2 = register_model(registry, contract, onnx[1], dataset_version="d2", alias=None)
    variants = [
        {"parity": v2.parity.model_copy(update={"passed": False})},
        {"gates": {"fairness_gap": Gate(passed=False, detail="gap 0.4 (limit 0.1)")}},
    ]
    extra = [
        registry.register(v2.model_copy(update={"version": registry.next_version(MODEL)} | change))
        for change in variants
    ]
    return registry, [v1, v2, *extra]


def parameters(proc: Any) -> dict[str, str]:
    with grpc.insecure_channel(proc.ready_info["grpc_address"]) as channel:
        meta = pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            pb.ModelMetadataRequest(name=MODEL)
        )
    return {k: v.string_param for k, v in meta.parameters.items()}


def scrape(proc: Any, name: str, **labels: str) -> float:
    port = proc.ready_info["metrics_port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def forged(manifest: ModelManifest, key: bytes | None = DEPLOY_KEY, **fields: Any) -> Deployment:
    body: dict[str, Any] = {"action": "promote", "champion_version": manifest.version}
    event = Deployment(
        model=MODEL,
        version=manifest.version,
        manifest_sha256=manifest.onnx_sha256,
        reason="forged",
        actor="user:mallory",
        **(body | fields),
    )
    return sign(event, key) if key else event


def test_forged_deployments_are_refused_and_a_killed_server_restores_the_registry_state(
    start_service: StartService,
    kafka_settings: KafkaSettings,
    store_uri: str,
    service_env: dict[str, str],
    contract: Contract,
    onnx: list[bytes],
) -> None:
    registry, (_, v2, parity_failed, refused) = seeded(store_uri, contract, onnx)
    serving = start_service("serving")
    assert parameters(serving)["role.1"] == "champion"
    cases = {
        "signature": forged(v2, key=None),
        "parity": forged(parity_failed),
        "gates": forged(refused),
        "canary_share": forged(
            v2,
            action="canary",
            champion_version=1,
            challenger_version=2,
            challenger_mode="canary",
            canary_percent=250,
        ),
    }
    # The genuine canary decision goes last: events of one model share a partition, so
    # once it is applied every forged event before it has been handled.
    genuine = decide(registry, contract, "canary", 2, canary_percent=25)
    asyncio.run(deploy(kafka_settings, [*cases.values(), genuine]))
    wait_for(lambda: parameters(serving).get("role.2") == "canary", "the genuine canary")
    for reason in cases:
        refusals = scrape(serving, "flywheel_serving_deployment_refusals_total", reason=reason)
        assert refusals == 1.0, reason
    assert scrape(serving, "flywheel_serving_deployments_total", outcome="applied") == 1.0
    assert scrape(serving, "flywheel_serving_swaps_total") == 0.0  # the champion never moved
    before = parameters(serving)
    assert (before["role.1"], before["canary_percent"]) == ("champion", "25.0")
    assert "role.3" not in before
    assert "role.4" not in before

    serving.kill()
    serving = start_service("serving")
    after = parameters(serving)
    assert {k: v for k, v in after.items() if k.startswith("role.") or k == "canary_percent"} == {
        "role.1": "champion",
        "role.2": "canary",
        "canary_percent": "25.0",
    }
    listed = CliRunner().invoke(app, ["models", MODEL, "--json"], env=service_env)
    assert listed.exit_code == 0, listed.output
    rows = {r["version"]: r for r in json.loads(listed.output)}
    assert {v: r["serving"] for v, r in rows.items()} == {
        1: "champion",
        2: "canary",
        3: "-",
        4: "-",
    }
    assert rows[2]["canary_percent"] == 25.0
