"""The training core without Kafka: triggers, runs, gates, registry, events, deployments."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from services.training import trainer
from services.training.core import RetryPolicy, TrainingCore
from services.training.evaluation import Predictions, labels_like, metrics
from services.training.metrics import TrainingMetrics
from services.training.reproduce import reproduce
from services.training.trainer import PHASES, TrainConfig
from shared import topics
from shared.contract import Contract, parse_contract
from shared.datasets import DatasetCatalog
from shared.events import (
    DatasetValidated,
    DeploymentRequest,
    DriftSummary,
    Event,
    RetrainRequest,
)
from shared.registry import Registry, TamperedArtifactError
from shared.store import ArtifactStore
from tests.unit.test_training_data import add_dataset, toy_contract, toy_table

FAST = TrainConfig(search_budget_s=0.5, cv_folds=2, importance_rows=300, importance_repeats=1)
MINIMUM_SEARCH = dataclasses.replace(FAST, search_budget_s=1e-6)
"""Only the minimum search (one candidate per family and their ensemble): deterministic."""


class Recorder:
    """An in-memory publisher."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Event]] = []

    async def publish(self, topic: str, key: str, event: Event) -> None:
        self.sent.append((topic, key, event))

    def on(self, topic: str) -> list[Any]:
        return [e for t, _, e in self.sent if t == topic]


def make_core(
    store: ArtifactStore, contract: Contract, config: TrainConfig = FAST, **options: Any
) -> tuple[TrainingCore, Recorder, CollectorRegistry]:
    """A training core on ``store`` with an in-memory publisher; ``options`` go to it."""
    registry = CollectorRegistry()
    recorder = Recorder()
    core = TrainingCore(
        {contract.name: contract},
        Registry(store),
        DatasetCatalog(store),
        recorder,
        TrainingMetrics(registry),
        config,
        **options,
    )
    return core, recorder, registry


def validated(
    version_id: str, rows: int, new_rows: int, *, drifted: bool = False
) -> DatasetValidated:
    return DatasetValidated(
        dataset="toy",
        dataset_version=version_id,
        rows=rows,
        new_rows=new_rows,
        batch_ids=[],
        report_uri="file:///report.json",
        drift=DriftSummary(drifted=drifted, drifted_features=["x"] if drifted else []),
    )


SEARCH_ONLY = {"training": {"fast_first": False}}
"""Contract override: the first run registers the searched model only."""


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    """A store holding toy v1, searched, trained and promoted (about a second and a half)."""
    store = ArtifactStore(f"file://{tmp_path / 'trained'}")
    version = add_dataset(store, "toy", [toy_table(2000)])
    core, _, _ = make_core(store, toy_contract(**SEARCH_ONLY))
    core.submit_validated(validated(version.id, 2000, 2000), lambda: None)
    outcome = asyncio.run(core.run("toy"))
    assert outcome.outcome == "promoted", outcome
    return store


async def test_first_model_is_registered_and_promoted_with_a_complete_manifest(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    version = add_dataset(store, "toy", [toy_table(2000)])
    core, recorder, metrics = make_core(store, toy_contract(**SEARCH_ONLY))
    acked: list[int] = []
    core.submit_validated(validated(version.id, 2000, 2000), lambda: acked.append(1))
    outcome = await core.run("toy")
    assert outcome.outcome == "promoted"
    assert acked == [1]
    registry = Registry(store)
    manifest = registry.get("toy", 1)
    extra = manifest.model_extra or {}
    assert manifest.dataset_version == version.id
    assert manifest.reason.startswith("first model")
    assert manifest.parity.passed
    assert "promoted" not in manifest.model_dump()  # the alias history says what serves
    assert manifest.metrics["roc_auc"] > 0.8
    assert set(manifest.metrics) >= {"accuracy", "roc_auc", "f1", "log_loss", "calibration_error"}
    assert set(manifest.library_versions) >= {"scikit-learn", "skl2onnx", "onnxruntime", "numpy"}
    assert manifest.code_version
    assert set(manifest.group_metrics["g"]["groups"]) == {"u", "v"}
    assert {"fpr", "fnr", "selection_rate"} <= set(manifest.group_metrics["g"]["groups"]["u"])
    assert set(extra["phase_seconds"]) == set(PHASES)
    assert extra["runs_tried"] >= 3
    assert extra["interpretable_baseline"]["coefficients"]
    assert extra["feature_importance"][0]["feature"] in {"x", "k", "c"}
    assert extra["holdout"]["method"] == "time-ordered"
    assert extra["candidate"] == "search"
    assert "fast_first_version" not in extra
    assert registry.version_numbers("toy") == [1]  # fast_first off: the searched one only
    assert manifest.gates["beats_baseline"].passed
    assert any("Gates: all passed" in line for line in extra["card"])
    assert registry.verify("toy", 1) == manifest
    assert registry.aliases("toy") == {"champion": 1, "challenger": None}
    assert registry.history("toy")[0].actor == "training"
    [registered] = recorder.on(topics.MODELS_REGISTERED)
    assert registered.version == 1
    assert registered.promoted
    assert registered.gates["parity"] is True
    [deployment] = recorder.on(topics.MODELS_DEPLOYMENTS)
    assert (deployment.action, deployment.version, deployment.actor) == ("promote", 1, "training")
    assert (deployment.history, deployment.champion_version) == ([0], 1)
    assert deployment.manifest_sha256 == manifest.onnx_sha256
    assert len(registry.runs("toy")) == 1
    assert (
        metrics.get_sample_value(
            "flywheel_training_runs_total", {"model": "toy", "outcome": "promoted"}
        )
        == 1
    )
    assert (
        metrics.get_sample_value(
            "flywheel_training_phase_seconds_count", {"model": "toy", "phase": "parity"}
        )
        == 1
    )
    assert metrics.get_sample_value(
        "flywheel_training_primary_metric", {"model": "toy", "version": "1"}
    ) == pytest.approx(manifest.metrics["roc_auc"])


async def test_a_first_model_is_a_fast_candidate_then_the_search_winner(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    version = add_dataset(store, "toy", [toy_table(2000)])
    core, recorder, metrics = make_core(store, toy_contract())
    acked: list[int] = []
    core.submit_validated(validated(version.id, 2000, 2000), lambda: acked.append(1))
    outcome = await core.run("toy")
    assert (outcome.outcome, outcome.version) == ("promoted", 2)
    assert acked == [1]
    registry = Registry(store)
    assert registry.version_numbers("toy") == [1, 2]
    fast, searched = registry.get("toy", 1), registry.get("toy", 2)
    fast_extra, searched_extra = fast.model_extra or {}, searched.model_extra or {}
    # Both on the same dataset version, for the same (first-model) trigger.
    assert fast.dataset_version == searched.dataset_version == version.id
    assert fast.reason == searched.reason
    assert fast.reason.startswith("first model")
    # v1: the fast candidate, no search, the normal gates on the same holdout.
    assert fast_extra["candidate"] == "fast_first"
    assert "no champion yet" in fast_extra["candidate_reason"]
    assert (fast.estimator, fast_extra["runs_tried"]) == ("hist_gradient_boosting", 1)
    assert set(fast_extra["phase_seconds"]) == {"fit", "evaluate", "export", "parity"}
    assert set(fast.gates) == {"parity", "beats_baseline", "fairness_gap"}
    assert all(g.passed for g in fast.gates.values())
    assert fast.parity.passed
    assert fast.metrics["roc_auc"] > 0.8
    assert fast_extra["holdout"] == {
        **searched_extra["holdout"],
        "train_rows": fast_extra["holdout"]["train_rows"],
        "train_first_event_time": fast_extra["holdout"]["train_first_event_time"],
        "train_rows_dropped": fast_extra["holdout"]["train_rows_dropped"],
    }  # the same time-ordered holdout
    assert fast_extra["training_config"]["max_train_rows"] == 20_000
    assert any("Fast first candidate" in line for line in fast_extra["card"])
    assert registry.verify("toy", 1) == fast
    # v2: the search winner, gated against v1 (the champion by then).
    assert searched_extra["candidate"] == "search"
    assert searched_extra["fast_first_version"] == 1
    assert searched_extra["runs_tried"] >= 3
    assert searched_extra["champion"]["version"] == 1
    assert {"beats_champion", "group_regression"} <= set(searched.gates)
    assert "beats_baseline" not in searched.gates
    # Both in the alias history, both announced.
    assert [(c.alias, c.version, c.actor) for c in registry.history("toy")] == [
        ("champion", 1, "training"),
        ("champion", 2, "training"),
    ]
    assert [e.version for e in recorder.on(topics.MODELS_REGISTERED)] == [1, 2]
    assert [(d.action, d.version) for d in recorder.on(topics.MODELS_DEPLOYMENTS)] == [
        ("promote", 1),
        ("promote", 2),
    ]
    runs = sorted(registry.runs("toy"), key=lambda r: r["version"])
    assert [(r["version"], r["candidate"]) for r in runs] == [(1, "fast_first"), (2, "search")]
    assert runs[1]["fast_first_version"] == 1
    [trigger] = registry.triggers("toy")
    assert (trigger["version"], trigger["fast_first_version"]) == (2, 1)
    for phase in ("fast_first:fit", "search", "fit"):
        count = metrics.get_sample_value(
            "flywheel_training_phase_seconds_count", {"model": "toy", "phase": phase}
        )
        assert count == 1, phase
    assert (
        metrics.get_sample_value(
            "flywheel_training_runs_total", {"model": "toy", "outcome": "promoted"}
        )
        == 1
    )  # one run for the trigger, two versions
    # The replayed trigger trains neither again.
    core.submit_validated(validated(version.id, 2000, 2000), lambda: None)
    assert (await core.run("toy")).outcome == "skipped"
    assert registry.version_numbers("toy") == [1, 2]


async def test_with_a_champion_only_the_searched_model_is_trained(store: ArtifactStore) -> None:
    core, recorder, _ = make_core(store, toy_contract())  # fast_first on
    core.submit_request(RetrainRequest(model="toy", reason="again"), lambda: None)
    await core.run("toy")
    registry = Registry(store)
    assert registry.version_numbers("toy") == [1, 2]
    extra = registry.get("toy", 2).model_extra or {}
    assert extra["candidate"] == "search"
    assert "fast_first_version" not in extra
    assert [e.version for e in recorder.on(topics.MODELS_REGISTERED)] == [2]


async def test_a_search_cut_short_after_the_fast_candidate_resumes_with_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    version = add_dataset(store, "toy", [toy_table(2000)])
    core, _, _ = make_core(store, toy_contract(), retry=RetryPolicy(base_s=0.0))

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("search broke")

    monkeypatch.setattr(trainer, "search", broken)
    core.submit_validated(validated(version.id, 2000, 2000), lambda: None)
    failed = await core.run("toy")
    assert failed.outcome == "failed"
    assert "search broke" in failed.detail
    registry = Registry(store)
    assert registry.version_numbers("toy") == [1]
    assert registry.aliases("toy")["champion"] == 1  # the fast candidate answers meanwhile
    monkeypatch.undo()
    retried = await core.run("toy")  # the retry: the first model is still due
    assert (retried.outcome, retried.version) == ("promoted", 2)
    assert registry.version_numbers("toy") == [1, 2]  # no second fast candidate
    extra = registry.get("toy", 2).model_extra or {}
    assert extra["candidate"] == "search"
    assert extra["champion"]["version"] == 1


async def test_a_replayed_event_never_trains_twice(store: ArtifactStore) -> None:
    core, _, _ = make_core(store, toy_contract())
    [v1] = DatasetCatalog(store).versions("toy")
    v2 = add_dataset(store, "toy", [toy_table(2000), toy_table(50, 1, 2000)], parent=v1.id)
    core.submit_validated(validated(v2.id, 2050, 50, drifted=True), lambda: None)
    first = await core.run("toy")
    core.submit_validated(validated(v2.id, 2050, 50, drifted=True), lambda: None)
    replay = await core.run("toy")
    assert first.outcome != "skipped"  # drift is a reason to retrain
    assert replay.outcome == "deferred"  # v2 saw this data: the drift waits for new data
    assert Registry(store).version_numbers("toy") == [1, 2]


async def test_too_few_rows_and_unknown_models_do_not_train(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    version = add_dataset(store, "toy", [toy_table(300)])
    core, _, metrics = make_core(store, toy_contract())
    acked: list[str] = []
    core.submit_validated(validated(version.id, 300, 300), lambda: acked.append("toy"))
    other = validated(version.id, 300, 300).model_copy(update={"dataset": "nope"})
    assert not core.submit_validated(other, lambda: acked.append("nope"))
    assert (await core.run("toy")).outcome == "skipped"
    assert acked == ["nope", "toy"]
    assert Registry(store).version_numbers("toy") == []
    assert (
        metrics.get_sample_value(
            "flywheel_training_runs_total", {"model": "toy", "outcome": "skipped"}
        )
        == 1
    )


async def test_triggers_arriving_before_a_run_are_coalesced(store: ArtifactStore) -> None:
    catalog = DatasetCatalog(store)
    [v1] = catalog.versions("toy")
    v2 = add_dataset(store, "toy", [toy_table(2000), toy_table(600, 1, 2000)], parent=v1.id)
    v3 = add_dataset(store, "toy", [toy_table(2000), toy_table(1200, 1, 2000)], parent=v2.id)
    core, _, metrics = make_core(store, toy_contract())
    acks: list[int] = []
    core.submit_validated(validated(v2.id, 2600, 600), lambda: acks.append(2))
    core.submit_validated(validated(v3.id, 3200, 1200), lambda: acks.append(3))
    core.submit_request(RetrainRequest(model="toy", reason="new labels"), lambda: acks.append(9))
    outcome = await core.run("toy")
    assert outcome.outcome in {"promoted", "refused"}
    assert sorted(acks) == [2, 3, 9]
    manifest = Registry(store).get("toy", 2)
    assert manifest.dataset_version == v3.id
    assert "1200 new rows" in manifest.reason
    assert "requested by user: new labels" in manifest.reason
    assert metrics.get_sample_value("flywheel_training_coalesced_total", {"model": "toy"}) == 2


async def test_a_worse_model_is_registered_but_not_promoted(store: ArtifactStore) -> None:
    worse = TrainConfig(**{**FAST.as_record(), "corrupt_label_share": 0.7})
    core, recorder, _ = make_core(store, toy_contract(), worse)
    core.submit_request(RetrainRequest(model="toy", reason="test a bad model"), lambda: None)
    outcome = await core.run("toy")
    assert outcome.outcome == "refused"
    assert "beats_champion" in outcome.detail
    registry = Registry(store)
    manifest = registry.get("toy", 2)
    assert not manifest.gates["beats_champion"].passed
    assert "vs champion" in manifest.gates["beats_champion"].detail
    assert (manifest.model_extra or {})["champion"]["version"] == 1
    assert registry.aliases("toy")["champion"] == 1
    assert recorder.on(topics.MODELS_DEPLOYMENTS) == []
    [registered] = recorder.on(topics.MODELS_REGISTERED)
    assert registered.gates["beats_champion"] is False
    # A failed gate is only promotable with an explicit override, recorded with who and why.
    promote = DeploymentRequest(
        model="toy", action="promote", version=2, actor="user:di", reason="known trade-off"
    )
    assert await core.apply_request(promote) == "refused"
    failed = sorted(n for n, g in manifest.gates.items() if not g.passed)
    assert "beats_champion" in failed
    assert "parity" not in failed
    wrong = promote.model_copy(update={"overrides": [*failed, "parity"]})
    assert await core.apply_request(wrong) == "refused"
    if len(failed) > 1:  # overriding only some of the failed gates is not enough
        partial = promote.model_copy(update={"overrides": ["beats_champion"]})
        assert await core.apply_request(partial) == "refused"
    assert registry.aliases("toy")["champion"] == 1
    assert registry.approvals("toy", 2) == []
    overriding = promote.model_copy(update={"overrides": failed})
    assert await core.apply_request(overriding) == "applied"
    assert registry.aliases("toy")["champion"] == 2
    [approval] = registry.approvals("toy", 2)
    assert (approval.actor, approval.reason) == ("user:di", "known trade-off")
    assert approval.detail["overrides"] == failed


def lossy_table(seed: int = 0) -> pa.Table:
    """Two features near 1e4 with a 0.01 spread; the label is their sum's sign. Their
    constants are made exact in float32 (``shared.float32_exact``), so the export is as
    close as float32 arithmetic gets (~1e-7), but not to :data:`UNREACHABLE_PARITY`."""
    rng = np.random.default_rng(seed)
    a, b = 1e4 + rng.normal(0, 0.01, 1500), 1e4 + rng.normal(0, 0.01, 1500)
    y = ((a - 1e4) + (b - 1e4) > 0).astype(int)
    return pa.table({"id": np.arange(1500), "a": a, "b": b, "y": y})


def lossy_contract() -> Contract:
    return parse_contract(
        {
            "name": "lossy",
            "task": "classification",
            "id": "id",
            "label": {"name": "y", "classes": [0, 1]},
            "features": [{"name": "a", "type": "float"}, {"name": "b", "type": "float"}],
            "training": {"min_rows": 100, "search_time_budget_s": 1},
            "promotion": UNREACHABLE_PARITY,
        }
    )


UNREACHABLE_PARITY = {"parity_atol": 1e-12, "parity_rtol": 0.0}
"""A parity bound no float32 export meets: every export disagrees with scikit-learn."""


async def test_an_onnx_export_that_disagrees_fails_the_parity_gate(tmp_path: Path) -> None:
    # ONNX Runtime computes in float32: its probabilities are within ~1e-7 of sklearn's,
    # not within the contract's 1e-12.
    table = lossy_table()
    store = ArtifactStore(f"file://{tmp_path}")
    version = add_dataset(store, "lossy", [table])
    core, recorder, _ = make_core(store, lossy_contract())
    core.submit_request(RetrainRequest(model="lossy", reason="parity test"), lambda: None)
    event = DatasetValidated(
        dataset="lossy",
        dataset_version=version.id,
        rows=1500,
        new_rows=1500,
        batch_ids=[],
        report_uri="file:///r.json",
    )
    core.submit_validated(event, lambda: None)
    outcome = await core.run("lossy")
    assert outcome.outcome == "refused"
    manifest = Registry(store).get("lossy", 1)
    assert not manifest.parity.passed
    assert not manifest.gates["parity"].passed
    assert manifest.parity.max_abs_diff > 1e-12
    assert Registry(store).aliases("lossy")["champion"] is None
    assert recorder.on(topics.MODELS_DEPLOYMENTS) == []
    refused = DeploymentRequest(
        model="lossy", action="promote", version=1, actor="user:x", reason="try"
    )
    assert await core.apply_request(refused) == "refused"
    # parity can never be overridden, not even explicitly
    overriding = refused.model_copy(update={"action": "approve", "overrides": ["parity"]})
    assert await core.apply_request(overriding) == "refused"
    assert Registry(store).history("lossy") == []


async def test_manual_strategy_waits_for_a_person(tmp_path: Path) -> None:
    contract = toy_contract(promotion={"strategy": "manual"})
    store = ArtifactStore(f"file://{tmp_path}")
    version = add_dataset(store, "toy", [toy_table(2000)])
    core, recorder, _ = make_core(store, contract)
    core.submit_validated(validated(version.id, 2000, 2000), lambda: None)
    assert (await core.run("toy")).outcome == "registered"
    assert recorder.on(topics.MODELS_DEPLOYMENTS) == []
    assert Registry(store).aliases("toy")["champion"] is None
    # The fast candidate and the searched model: both registered, neither serving.
    assert Registry(store).version_numbers("toy") == [1, 2]
    assert [e.promoted for e in recorder.on(topics.MODELS_REGISTERED)] == [False, False]
    promote = DeploymentRequest(
        model="toy", action="promote", version=1, actor="user:ann", reason="ok"
    )
    assert await core.apply_request(promote) == "refused"  # no approval yet
    approve = DeploymentRequest(
        model="toy", action="approve", version=1, actor="user:cy", reason="reviewed the card"
    )
    assert await core.apply_request(approve) == "applied"
    assert recorder.on(topics.MODELS_DEPLOYMENTS) == []  # approving deploys nothing
    assert await core.apply_request(promote) == "applied"
    assert await core.apply_request(promote) == "applied"  # a replay changes nothing more
    history = Registry(store).history("toy")
    assert [(c.alias, c.version, c.actor, c.reason) for c in history] == [
        ("approval", 1, "user:cy", "reviewed the card"),
        ("champion", 1, "user:ann", "ok"),
    ]
    first, again = recorder.on(topics.MODELS_DEPLOYMENTS)
    assert first.id == again.id
    assert first.history == again.history == [1]


async def test_deployment_requests_move_the_aliases(tmp_path: Path) -> None:
    # Both runs search the minimum only, so v2 is v1 again however fast the machine is
    # (a time-boxed search tries more or fewer grid points and may pick another model).
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    version = add_dataset(store, "toy", [toy_table(2000)])
    registry = Registry(store)
    core, _, metrics = make_core(store, toy_contract(**SEARCH_ONLY), MINIMUM_SEARCH)
    core.submit_validated(validated(version.id, 2000, 2000), lambda: None)
    assert (await core.run("toy")).outcome == "promoted"
    core.submit_request(RetrainRequest(model="toy", reason="second"), lambda: None)
    await core.run("toy")
    first, second = (registry.get("toy", v).metrics for v in (1, 2))
    assert first == second

    async def send(action: str, version: int, **kw: Any) -> str:
        event = DeploymentRequest(
            model="toy", action=action, version=version, actor="user:bo", reason=action, **kw
        )  # type: ignore[arg-type]
        return await core.apply_request(event)

    assert registry.aliases("toy")["champion"] == 2  # as good as v1: promoted (margin 0)
    assert await send("canary", 1, canary_percent=25) == "applied"
    assert registry.aliases("toy") == {"champion": 2, "challenger": 1}
    assert registry.alias_detail("toy", "challenger")["canary_percent"] == 25
    assert await send("retire", 1) == "applied"
    assert registry.aliases("toy")["challenger"] is None
    assert await send("shadow", 1) == "applied"
    assert await send("rollback", 1) == "applied"
    assert registry.aliases("toy") == {"champion": 1, "challenger": None}
    assert registry.history("toy")[-1].reason == "rollback"
    assert await send("retire", 2) == "refused"
    assert await send("promote", 99) == "refused"
    assert await send("canary", 2, canary_percent=0) == "refused"  # shares are in (0, 100]
    assert await send("canary", 2, canary_percent=250) == "refused"
    assert await send("promote", 1) == "ignored"  # already the champion: nothing moves
    assert registry.aliases("toy")["champion"] == 1
    assert registry.previous_champion("toy") == 2
    assert (
        metrics.get_sample_value(
            "flywheel_training_deployments_total",
            {"model": "toy", "action": "promote", "outcome": "refused"},
        )
        == 1
    )


def test_reproduce_matches_and_refuses_tampering(store: ArtifactStore) -> None:
    registry, catalog = Registry(store), DatasetCatalog(store)
    result = reproduce(toy_contract(), registry, catalog, 1, threads=1)
    assert result.passed, result.problems
    assert result.rows == 400
    assert result.max_abs_diff == 0.0
    manifest = registry.get("toy", 1)
    path = Path(store.root) / store.key_for(manifest.onnx_uri)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(TamperedArtifactError, match="ONNX sha256"):
        reproduce(toy_contract(), registry, catalog, 1, threads=1)


def test_reproduce_refuses_an_edited_manifest(store: ArtifactStore) -> None:
    path = Path(store.root) / "models/toy/versions/000001.json"
    path.write_text(path.read_text().replace('"seed": 42', '"seed": 43'))
    with pytest.raises(TamperedArtifactError, match="manifest changed"):
        reproduce(toy_contract(), Registry(store), DatasetCatalog(store), 1)


async def test_a_due_schedule_retrains_once_per_period(store: ArtifactStore) -> None:
    contract = toy_contract(training={"schedule_seconds": 60})
    core, _, _ = make_core(store, contract)
    created = Registry(store).get("toy", 1).created.timestamp()
    assert core.due_schedules(created + 30) == []
    [(model, period)] = core.due_schedules(created + 90)
    assert model == "toy"
    core.submit_schedule(model, period)
    outcome = await core.run("toy")
    assert outcome.outcome != "skipped"
    assert Registry(store).get("toy", 2).reason == "schedule (every 60.0s)"
    core.submit_schedule(model, period)  # the same period again: already handled
    assert (await core.run("toy")).outcome == "skipped"


async def test_a_regression_contract_trains_with_regression_metrics(tmp_path: Path) -> None:
    contract = parse_contract(
        {
            "name": "reg",
            "task": "regression",
            "id": "id",
            "label": {"name": "y", "type": "float"},
            "features": [
                {"name": "x", "type": "float"},
                {"name": "c", "type": "category", "values": ["a", "b"]},
            ],
            "groups": ["c"],
            "training": {"min_rows": 100},
            "promotion": {"primary_metric": "rmse", "max_fairness_gap": 10},
        }
    )
    rng = np.random.default_rng(3)
    x, c = rng.normal(0, 1, 1200), rng.choice(["a", "b"], 1200)
    y = 2 * x + (c == "a") + rng.normal(0, 0.1, 1200)
    store = ArtifactStore(f"file://{tmp_path}")
    version = add_dataset(store, "reg", [pa.table({"id": np.arange(1200), "x": x, "c": c, "y": y})])
    core, _, _ = make_core(store, contract)
    core.submit_request(RetrainRequest(model="reg", reason="regression"), lambda: None)
    outcome = await core.run("reg")
    assert outcome.outcome == "promoted", outcome
    manifest = Registry(store).get("reg", 1)
    assert set(manifest.metrics) == {"mae", "rmse", "r2"}
    assert manifest.metrics["r2"] > 0.9
    assert manifest.parity.passed
    assert manifest.gates["beats_baseline"].passed
    assert "relative_mae" in manifest.group_metrics["c"]["gaps"]  # scale-free, not label units
    assert reproduce(contract, Registry(store), DatasetCatalog(store), 1, threads=1).passed
    assert version.rows == 1200


async def test_stopping_abandons_a_run_without_acking_or_registering(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    version = add_dataset(store, "toy", [toy_table(2000)])
    core, recorder, _ = make_core(store, toy_contract())
    acked: list[int] = []
    core.submit_validated(validated(version.id, 2000, 2000), lambda: acked.append(1))
    await core.stop()  # sets the cancel flag the run checks between steps
    with pytest.raises(asyncio.CancelledError):
        await core.run("toy")
    assert acked == []
    assert Registry(store).version_numbers("toy") == []
    assert recorder.sent == []


def test_a_champion_with_string_labels_is_scored_on_the_contract_classes() -> None:
    contract = toy_contract()
    y = np.array([0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    same = labels_like(contract, y, Predictions(np.array(["0", "1", "0"]), proba))
    assert same.labels.tolist() == [0, 1, 0]
    assert metrics(contract, y, same)["accuracy"] == pytest.approx(2 / 3)
    odd = Predictions(np.array(["0", "yes", "1"]), proba)
    assert labels_like(contract, y, odd) is odd  # not the contract's classes: left as is
