"""Deploy-key signatures and the one rule of what may serve."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.approval import override_problem, refusal
from shared.events import Deployment, DeploymentRequest
from shared.registry import AliasChange, Gate, ModelManifest, Parity
from shared.settings import ServiceSettings
from shared.signing import DeployKeyError, generate_key, load_key, sign, verify

KEY = b"k" * 32


def test_a_signature_survives_the_wire_and_breaks_on_any_change() -> None:
    event = sign(
        Deployment(model="m", action="canary", version=2, canary_percent=10, reason="r"), KEY
    )
    assert verify(event, KEY)
    # Parsed back from its JSON (as a consumer sees it), the body is the same.
    assert verify(Deployment.model_validate_json(event.model_dump_json()), KEY)
    assert not verify(event.model_copy(update={"canary_percent": 100.0}), KEY)
    assert not verify(event.model_copy(update={"history": [0]}), KEY)
    assert not verify(event, b"x" * 32)
    unsigned = Deployment(model="m", action="promote", version=2, reason="r")
    assert not verify(unsigned, KEY)
    request = sign(
        DeploymentRequest(model="m", action="approve", version=1, actor="u", reason="r"), KEY
    )
    assert verify(request, KEY)
    assert request.signature != sign(request.model_copy(update={"overrides": ["g"]}), KEY).signature


def test_the_key_comes_from_the_setting_or_its_file(tmp_path: Path) -> None:
    assert load_key(ServiceSettings()) is None
    assert load_key(ServiceSettings(deploy_key=SecretStr(" " + "a" * 20 + "\n"))) == b"a" * 20
    path = generate_key(tmp_path / "var" / "deploy.key")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    first = path.read_text()
    assert generate_key(path).read_text() == first  # never replaced once there
    assert load_key(ServiceSettings(deploy_key_file=str(path))) == first.strip().encode()
    assert load_key(ServiceSettings(), fallback=path) == first.strip().encode()
    with pytest.raises(DeployKeyError, match="shorter"):
        load_key(ServiceSettings(deploy_key=SecretStr("short")))
    with pytest.raises(DeployKeyError, match="cannot read"):
        load_key(ServiceSettings(deploy_key_file=str(tmp_path / "missing")))


def _manifest(parity: bool = True, **gates: bool) -> ModelManifest:
    return ModelManifest(
        model="m",
        version=3,
        task="classification",
        dataset_version="d",
        code_version="c",
        estimator="e",
        seed=0,
        features=["x"],
        parity=Parity(passed=parity, rows=1, label_agreement=1, max_abs_diff=0, tolerance=1e-5),
        onnx_uri="u",
        onnx_sha256="s",
        training_time_s=0,
        reason="r",
        gates={"parity": Gate(passed=parity, detail="")}
        | {g: Gate(passed=ok, detail="") for g, ok in gates.items()},
    )


def _approval(*overrides: str) -> AliasChange:
    return AliasChange(
        seq=0,
        alias="approval",
        version=3,
        previous=None,
        actor="user:a",
        reason="ok",
        detail={"overrides": list(overrides)},
    )


def _reason(manifest: ModelManifest, approvals: list[AliasChange], strategy: str) -> str | None:
    refused = refusal(manifest, approvals, strategy)
    return refused.reason if refused else None


def test_what_may_serve() -> None:
    failed = _manifest(fairness_gap=False, beats_champion=False)
    assert refusal(_manifest(beats_champion=True), [], "direct") is None
    assert _reason(_manifest(), [], "manual") == "approval"
    assert refusal(_manifest(), [_approval()], "manual") is None
    assert _reason(failed, [_approval("fairness_gap")], "direct") == "gates"
    both = [_approval("fairness_gap"), _approval("beats_champion")]
    assert refusal(failed, both, "direct") is None
    broken = _manifest(parity=False)
    assert _reason(broken, [_approval("parity")], "direct") == "parity"
    assert "never" in (override_problem(broken, ["parity"]) or "")
    assert "no gate" in (override_problem(failed, ["nope"]) or "")
    assert "nothing to override" in (
        override_problem(_manifest(beats_champion=True), ["beats_champion"]) or ""
    )
    assert override_problem(failed, ["fairness_gap"]) is None
