"""Registry additions for training: runs, trigger keys, manifest digests, tamper checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.registry import AliasState, ModelManifest, Parity, Registry, TamperedArtifactError
from shared.store import ArtifactStore


def manifest(registry: Registry, version: int = 1) -> ModelManifest:
    sha, uri = registry.put_onnx("m", b"onnx-bytes-%d" % version)
    return ModelManifest(
        model="m",
        version=version,
        task="classification",
        dataset_version="d",
        code_version="git:abc",
        estimator="linear",
        seed=1,
        features=["x"],
        parity=Parity(passed=True, rows=1, label_agreement=1.0, max_abs_diff=0.0, tolerance=1e-5),
        onnx_uri=uri,
        onnx_sha256=sha,
        training_time_s=1.0,
        reason="test",
    )


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(ArtifactStore(f"file://{tmp_path}"))


def test_runs_are_kept_in_order_and_never_rewritten(registry: Registry) -> None:
    registry.put_run("m", "20260101T000000-a", {"run_id": "a", "candidates": []})
    registry.put_run("m", "20260101T000001-b", {"run_id": "b", "candidates": []})
    assert [r["run_id"] for r in registry.runs("m")] == ["a", "b"]
    with pytest.raises(FileExistsError):
        registry.put_run("m", "20260101T000000-a", {"run_id": "other"})


def test_trigger_keys_remember_the_first_record(registry: Registry) -> None:
    assert not registry.has_trigger("m", "k" * 64)
    registry.put_trigger("m", "k" * 64, {"version": 1})
    registry.put_trigger("m", "k" * 64, {"version": 2})  # a replay: no error, no change
    assert registry.has_trigger("m", "k" * 64)
    assert registry.store.get_json(f"models/m/triggers/{'k' * 64}.json") == {"version": 1}


def test_verify_accepts_an_untouched_version(registry: Registry) -> None:
    registered = registry.register(manifest(registry))
    assert registry.verify("m", 1) == registered
    assert registry.manifest_uri("m", 1).endswith("models/m/versions/000001.json")


def test_verify_refuses_an_edited_manifest(registry: Registry) -> None:
    registry.register(manifest(registry))
    path = Path(registry.store.root) / "models/m/versions/000001.json"
    path.write_text(path.read_text().replace('"seed": 1', '"seed": 2'))
    with pytest.raises(TamperedArtifactError, match="manifest changed"):
        registry.verify("m", 1)


def test_verify_refuses_onnx_that_does_not_match_its_name(registry: Registry) -> None:
    m = manifest(registry)
    other_sha, other_uri = registry.put_onnx("m", b"other model")
    registry.register(m.model_copy(update={"onnx_uri": other_uri}))
    with pytest.raises(TamperedArtifactError, match="does not name"):
        registry.verify("m", 1)
    assert other_sha != m.onnx_sha256


def test_register_needs_a_reason(registry: Registry) -> None:
    with pytest.raises(ValueError, match="reason"):
        registry.register(manifest(registry).model_copy(update={"reason": " "}))


def test_the_history_gives_the_serving_state_and_keeps_approvals_apart(
    registry: Registry,
) -> None:
    for version in (1, 2, 3):
        registry.register(manifest(registry, version))
    registry.set_alias("m", "champion", 1, actor="training", reason="first")
    registry.approve("m", 2, actor="user:a", reason="card ok", overrides=["fairness_gap"])
    canary = registry.set_alias(
        "m",
        "challenger",
        2,
        actor="user:a",
        reason="try",
        detail={"mode": "canary", "canary_percent": 25},
    )
    assert registry.aliases("m") == {"champion": 1, "challenger": 2}  # approvals are no alias
    assert registry.state("m") == AliasState(1, 2, "canary", 25.0, canary.seq)
    registry.set_alias("m", "champion", 2, actor="user:a", reason="promote")
    registry.set_alias("m", "challenger", None, actor="user:a", reason="promote")
    assert registry.state("m") == AliasState(2, None, None, None, 4)
    assert registry.state("m", upto=canary.seq).canary_percent == 25.0  # as of that decision
    assert registry.previous_champion("m") == 1
    [approval] = registry.approvals("m", 2)
    assert (approval.alias, approval.actor, approval.detail) == (
        "approval",
        "user:a",
        {"overrides": ["fairness_gap"]},
    )
    assert registry.approvals("m", 3) == []
    with pytest.raises(ValueError, match="reason"):
        registry.approve("m", 3, actor="user:a", reason=" ")
    with pytest.raises(KeyError):
        registry.approve("m", 9, actor="user:a", reason="no such version")
    assert [c.seq for c in registry.history("m")] == [0, 1, 2, 3, 4]
