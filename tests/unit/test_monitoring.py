"""Monitoring's transport-free core: join, windows, drift, triggers, actions, the log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import structlog
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from services.monitoring.actions import Trigger
from services.monitoring.core import Limits, MonitoringCore
from services.monitoring.join import EarlyLabel, LabelJoin, Pending
from services.monitoring.metrics import MonitoringMetrics
from services.monitoring.predlog import PredictionLog, read_log
from services.monitoring.quality import Labelled, QualityWindow, largest_gaps
from services.monitoring.router import FeedbackRouter
from services.monitoring.state import Partitioner, PartitionSnapshots
from services.monitoring.testing import load_car_loan, prediction_events, seed_version
from services.monitoring.window_drift import VersionDrift
from shared import topics
from shared.cli.lineage import find_feedback, find_prediction, lineage
from shared.contract import Contract, load_contract, parse_contract
from shared.datasets import DatasetCatalog
from shared.deployment_check import DeploymentCheck
from shared.drift import build_profile
from shared.events import (
    Deployment,
    DeploymentRequest,
    Feedback,
    Prediction,
    PredictionBatch,
    PredictionGroup,
    RetrainRequest,
    decode_predictions,
    routing_key,
)
from shared.features import to_frame
from shared.registry import ModelManifest, Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.clock import Clock
from tests.conftest import CONTRACTS, DEPLOY_KEY, need_data
from tests.deploying import decide

DRIFTED = {"car_value", "loan_length", "salary_range", "repaid_loan_on_prev_car"}


@pytest.fixture(scope="module")
def car_loan() -> tuple[pd.DataFrame, pd.DataFrame]:
    data = need_data("synthetic_car_loan_reference.csv")[0].parent
    return load_car_loan(data)


@pytest.fixture
def contract() -> Contract:
    return load_contract(CONTRACTS / "car_loan.yaml")


def _pending(model: str = "m", at: float = 0.0) -> Pending:
    return Pending(model, 1, "champion", 1, 0.9, {}, None, None, None, at)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_trigger_needs_consecutive_windows_and_respects_cooldown() -> None:
    t = Trigger(consecutive=2, cooldown_s=60)
    assert [t.observe(c, 0) for c in (True, False, True)] == [False, False, False]
    assert t.observe(True, 1) is True  # second in a row
    assert t.observe(True, 2) is False
    assert t.observe(True, 3) is False
    assert t.observe(True, 70) is True


def test_join_is_bounded_by_size_and_age() -> None:
    join = LabelJoin(max_pending=2, max_age_s=10)
    assert join.add("a", _pending(at=0)) == []
    assert join.add("b", _pending(at=1)) == []
    evicted = join.add("c", _pending(at=2))
    assert len(evicted) == 1
    assert evicted[0].at == 0
    assert join.match("a") is None  # evicted: the feedback is late
    assert join.match("b") is not None
    assert join.match("b") is None  # labelled once
    assert [p.at for p in join.expire(13)] == [2]
    assert len(join) == 0


def test_quality_window_metrics_and_group_gaps() -> None:
    w = QualityWindow(size=4, task="classification", positive=1, min_group_rows=1)
    rows = [
        (1, 1, 0.9, "a"),
        (0, 1, 0.6, "a"),
        (0, 0, 0.2, "b"),
        (1, 0, 0.4, "b"),
        (1, 1, 0.8, "b"),
    ]
    for truth, pred, score, g in rows:
        w.add(Labelled(truth, pred, score, {"g": g}))
    assert len(w) == 4  # the oldest row slid out
    m = w.metrics()
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["roc_auc"] == pytest.approx(0.75)
    groups = w.group_metrics("g")
    assert groups["g=a"] == {"selection_rate": 1.0, "fpr": 1.0}
    assert groups["g=b"]["fnr"] == pytest.approx(0.5)
    assert largest_gaps(groups)["selection_rate"] == pytest.approx(1.0 - 1 / 3)
    reg = QualityWindow(size=10, task="regression")
    for truth, pred in ((1.0, 2.0), (3.0, 1.0)):
        reg.add(Labelled(truth, pred, None, {}))
    assert reg.metrics() == {"mae": 1.5, "rmse": pytest.approx(np.sqrt(2.5)), "r2": -1.5}


def test_window_drift_flags_the_drifted_car_loan_features(
    contract: Contract, car_loan: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    reference, analysis = car_loan
    frame = to_frame(contract, {f: reference[f].to_numpy() for f in contract.feature_names})
    profile = build_profile(contract, frame, reference["repaid"].to_numpy())
    drift = VersionDrift(
        contract, profile, window_rows=5000, psi_threshold=0.2, wasserstein_threshold=0.1
    )
    first = analysis.iloc[:5000]
    second = analysis.iloc[-5000:]
    rows = [*first.to_dict(orient="records"), *second.to_dict(orient="records")]
    reports = drift.add(
        rows, list(analysis["y_pred_proba"].iloc[:5000]) + list(second["y_pred_proba"])
    )
    assert [r.rows for r in reports] == [5000, 5000]
    assert reports[0].drifted == []
    assert (
        set(reports[1].drifted)
        | {
            f
            for f, s in reports[1].features.items()
            if s.get("ks", 0) > 0.1 or s.get("js", 0) > 0.1
        }
        >= DRIFTED
    )
    assert {"car_value", "loan_length"} <= set(reports[1].drifted)
    assert reports[1].features["debt_to_income_ratio"]["psi"] < 0.05
    assert reports[1].features["debt_to_income_ratio"]["wasserstein"] < 0.1
    assert reports[1].features["car_value"]["wasserstein"] > 0.5
    assert reports[0].prediction_drift == 0.0  # the first window is the score reference
    assert reports[1].prediction_drift is not None
    assert reports[1].prediction_drift > 0
    # Bounded memory: only the reference bins are counted, whatever the traffic.
    assert all(h.counts.size <= 21 for part in drift.parts.values() for h in part.values())


def test_window_drift_flags_a_small_shift_by_wasserstein() -> None:
    contract = parse_contract(
        {
            "name": "one",
            "task": "classification",
            "id": "id",
            "label": {"name": "y", "classes": [0, 1]},
            "features": [{"name": "x", "type": "float"}],
        }
    )
    rng = np.random.default_rng(7)
    profile = build_profile(contract, pd.DataFrame({"x": rng.normal(0.0, 1.0, 50_000)}))
    drift = VersionDrift(
        contract, profile, window_rows=10_000, psi_threshold=0.2, wasserstein_threshold=0.1
    )
    rows = [{"x": v} for v in rng.normal(0.02, 1.0, 10_000)]
    rows += [{"x": v} for v in rng.normal(0.15, 1.0, 10_000)]
    calm, shifted = drift.add(rows, [None] * len(rows))
    assert calm.drifted == []
    assert shifted.features["x"]["psi"] < 0.2  # PSI alone would miss it
    assert shifted.features["x"]["wasserstein"] >= 0.1
    assert shifted.drifted == ["x"]


def _core(
    store: ArtifactStore, contract: Contract, clock: Clock, **limits: Any
) -> tuple[MonitoringCore, CollectorRegistry]:
    registry = CollectorRegistry()
    core = MonitoringCore(
        {contract.name: contract},
        Registry(store),
        DatasetCatalog(store),
        MonitoringMetrics(registry),
        LabelJoin(100_000, 3600),
        PredictionLog(store, flush_rows=10_000, flush_s=60),
        structlog.get_logger("test"),
        Limits(**{"eval_every_labels": 100, **limits}),
        clock=clock,
    )
    core.load_aliases()
    return core, registry


def _feedback(rows: pd.DataFrame, manifest: ModelManifest, invert: bool = False) -> list[Feedback]:
    return [
        Feedback(prediction_id=f"car_loan-{i}-{manifest.version}", label=int(y))
        for i, y in zip(rows["id"], rows["repaid"], strict=True)
    ]


def test_served_drift_raises_the_metric_and_requests_a_retrain_with_evidence(
    tmp_path: Path, contract: Contract, car_loan: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    reference, analysis = car_loan
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    manifest = seed_version(store, contract, reference.iloc[:20_000], 1)
    clock = Clock()
    core, reg = _core(store, contract, clock, window_rows=2000)
    calm = list(prediction_events(contract, analysis.iloc[:4000], manifest))
    assert core.on_predictions(calm) == []
    psi_calm = _value(
        reg,
        "flywheel_monitoring_drift_score",
        model="car_loan",
        version="1",
        feature="car_value",
        stat="psi",
    )
    assert psi_calm is not None
    assert psi_calm < 0.1
    drifted = list(prediction_events(contract, analysis.iloc[-4000:], manifest))
    out = core.on_predictions(drifted)
    psi_drift = _value(
        reg,
        "flywheel_monitoring_drift_score",
        model="car_loan",
        version="1",
        feature="car_value",
        stat="psi",
    )
    assert psi_drift is not None
    assert psi_drift > 0.2 > psi_calm
    wasserstein_drift = _value(
        reg,
        "flywheel_monitoring_drift_score",
        model="car_loan",
        version="1",
        feature="car_value",
        stat="wasserstein",
    )
    assert wasserstein_drift is not None
    assert wasserstein_drift > 0.1
    assert [o.topic for o in out] == [topics.RETRAIN_REQUESTS]  # after two windows in a row
    request = out[0].event
    assert isinstance(request, RetrainRequest)
    assert request.requested_by == "monitoring"
    assert request.model == "car_loan"
    assert request.evidence["trigger"] == "drift"
    assert request.evidence["model_version"] == 1
    assert len(request.evidence["windows"]) == 2
    assert {"car_value", "loan_length"} <= set(request.evidence["windows"][-1]["drifted"])
    assert set(request.evidence["windows"][-1]["drifted"]["car_value"]) == {"psi", "wasserstein"}
    assert request.evidence["wasserstein_threshold"] == 0.1
    # Cool-down: more drifted windows do not loop.
    assert (
        core.on_predictions(list(prediction_events(contract, analysis.iloc[-8000:-4000], manifest)))
        == []
    )
    assert _value(reg, "flywheel_monitoring_actions_total", model="car_loan", action="retrain") == 1


def _serve(
    core: MonitoringCore,
    contract: Contract,
    rows: pd.DataFrame,
    champion: ModelManifest,
    canary: ModelManifest,
    canary_invert: bool,
) -> list[Any]:
    """Every 4th row answered by the canary; then all the feedback."""
    out = []
    preds: list[Prediction] = []
    for i, (_, chunk) in enumerate(rows.groupby(np.arange(len(rows)) % 4 == 0)):
        manifest = canary if i == 1 else champion
        preds.extend(
            prediction_events(
                contract,
                chunk,
                manifest,
                role="canary" if i == 1 else "champion",
                invert=canary_invert and i == 1,
            )
        )
    out.extend(core.on_predictions(preds))
    fb = [
        Feedback(
            prediction_id=p.id, label=int(rows.set_index("id").loc[int(p.request_id), "repaid"])
        )
        for p in preds
    ]
    out.extend(core.on_feedback(fb))
    return out


@pytest.mark.parametrize(
    ("invert", "action", "version"), [(True, "rollback", 1), (False, "promote", 2)]
)
def test_canary_is_rolled_back_when_worse_and_promoted_when_not(
    tmp_path: Path,
    contract: Contract,
    car_loan: tuple[pd.DataFrame, pd.DataFrame],
    invert: bool,
    action: str,
    version: int,
) -> None:
    reference, analysis = car_loan
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    v1 = seed_version(store, contract, reference.iloc[:5000], 1)
    v2 = seed_version(store, contract, reference.iloc[5000:10_000], 2, champion=False)
    clock = Clock()
    core, reg = _core(store, contract, clock)
    core.on_deployment(
        Deployment(
            model="car_loan",
            action="canary",
            version=2,
            champion_version=1,
            canary_percent=25,
            reason="t",
        )
    )
    out = _serve(core, contract, analysis.iloc[:4000], v1, v2, canary_invert=invert)
    # Monitoring only requests the change; training records it and publishes the deployment.
    assert [o.topic for o in out if "deploy" in o.topic] == [topics.DEPLOYMENT_REQUESTS]
    d = next(o.event for o in out if o.topic == topics.DEPLOYMENT_REQUESTS)
    assert isinstance(d, DeploymentRequest)
    assert (d.action, d.version, d.actor) == (action, version, "monitoring")
    assert d.evidence["challenger"] == 2
    assert core.models["car_loan"].challenger == 2  # nothing changed before training decides
    assert _value(reg, "flywheel_monitoring_actions_total", model="car_loan", action=action) == 1
    diff = _value(
        reg, "flywheel_monitoring_metric_difference", model="car_loan", champion="1", challenger="2"
    )
    assert diff is not None
    assert diff < -0.02 if invert else diff > -0.02
    core.on_deployment(
        Deployment(model="car_loan", action=d.action, version=version, reason=d.reason)  # type: ignore[arg-type]
    )
    assert core.models["car_loan"].challenger is None
    assert core.models["car_loan"].champion == version


def test_a_canary_that_replaced_another_is_decided_within_the_cooldown(
    tmp_path: Path, contract: Contract, car_loan: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    # v2's promotion was requested, then v3 replaced v2 as the canary before training
    # acted (it refuses a promote for a version that is no longer the challenger): v3's
    # labels, all arriving within the contract's cool-down, still decide v3.
    reference, analysis = car_loan
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    v1 = seed_version(store, contract, reference.iloc[:5000], 1)
    v2 = seed_version(store, contract, reference.iloc[5000:10_000], 2, champion=False)
    v3 = seed_version(store, contract, reference.iloc[10_000:15_000], 3, champion=False)
    clock = Clock()
    core, reg = _core(store, contract, clock)
    assert contract.monitoring.cooldown_s > 10
    decisions = []
    for canary, rows in ((v2, analysis.iloc[:4000]), (v3, analysis.iloc[4000:8000])):
        core.on_deployment(
            Deployment(
                model="car_loan",
                action="canary",
                version=canary.version,
                champion_version=1,
                canary_percent=25,
                reason="t",
            )
        )
        out = _serve(core, contract, rows, v1, canary, canary_invert=False)
        decisions += [
            (o.event.action, o.event.version) for o in out if isinstance(o.event, DeploymentRequest)
        ]
        clock.now += 1
    assert decisions == [("promote", 2), ("promote", 3)]
    assert _value(reg, "flywheel_monitoring_actions_total", model="car_loan", action="promote") == 2


def test_monitoring_follows_only_deployments_the_registry_recorded(
    tmp_path: Path, contract: Contract, car_loan: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    reference, _ = car_loan
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    seed_version(store, contract, reference.iloc[:3000], 1)
    seed_version(store, contract, reference.iloc[3000:6000], 2, champion=False)
    registry = Registry(store)
    core, reg = _core(store, contract, Clock())
    core.check = DeploymentCheck({contract.name: contract}, registry, DEPLOY_KEY)
    forged = Deployment(
        model=contract.name, action="promote", version=2, champion_version=2, reason="forged"
    )
    core.on_deployment(forged)  # unsigned: no registry decision stands behind it
    assert core.models[contract.name].champion == 1
    refused = {"topic": topics.MODELS_DEPLOYMENTS, "reason": "signature"}
    assert reg.get_sample_value("flywheel_monitoring_rejected_total", refused) == 1
    genuine = decide(registry, contract, "canary", 2, canary_percent=20)
    core.on_deployment(genuine)
    assert core.models[contract.name].challenger == 2
    assert core.models[contract.name].challenger_mode == "canary"


def test_feedback_joins_counts_late_labels_and_the_log_reads_back(
    tmp_path: Path, contract: Contract, car_loan: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    reference, analysis = car_loan
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    manifest = seed_version(store, contract, reference.iloc[:3000], 1)
    clock = Clock()
    core, reg = _core(store, contract, clock, eval_every_labels=10)
    rows = analysis.iloc[:200]
    preds = list(prediction_events(contract, rows, manifest))
    feedback = _feedback(rows, manifest)
    # Feedback may be consumed before its prediction: it waits for it.
    core.on_feedback([*feedback[:20], Feedback(prediction_id="nobody", label=1)])
    core.on_predictions(preds)
    core.on_feedback(feedback[20:])
    # A second copy of joined labels (the router forwards at least once, or a user resent).
    core.on_feedback([feedback[0], feedback[150]])
    assert _value(reg, "flywheel_monitoring_labels_total", model="unknown", outcome="late") is None
    assert (
        _value(reg, "flywheel_monitoring_labels_total", model="unknown", outcome="duplicate") == 2
    )
    clock.now += 3601  # past the join's max age: the stray feedback never matched
    core.on_feedback([])
    joined = _value(reg, "flywheel_monitoring_labels_total", model="car_loan", outcome="joined")
    assert joined == 200
    assert _value(reg, "flywheel_monitoring_labels_total", model="unknown", outcome="late") == 1
    acc = _value(
        reg, "flywheel_monitoring_live_metric", model="car_loan", version="1", metric="accuracy"
    )
    assert acc is not None
    assert 0.5 < acc <= 1.0
    gap = _value(
        reg,
        "flywheel_monitoring_fairness_gap",
        model="car_loan",
        version="1",
        attribute="salary_range",
        metric="selection_rate",
    )
    assert gap is not None
    uris = core.predlog.flush()
    assert len(uris) == 3  # predictions, joined feedback, late feedback
    found = find_prediction(store, preds[7].id)
    assert found is not None
    assert found["model_version"] == 1
    assert found["outputs"] == preds[7].outputs
    assert [f["label"] for f in find_feedback(store, preds[7].id)] == [int(rows["repaid"].iloc[7])]
    assert find_prediction(store, "nobody") is None
    trail = lineage(store, preds[7].id)
    assert trail["model"]["version"] == 1
    assert trail["dataset"]["version"] == manifest.dataset_version
    assert trail["batches"][0]["offsets"][0]["topic"] == "data.events"
    with pytest.raises(KeyError):
        lineage(store, "nobody")


def test_unknown_models_are_rejected_and_counted(tmp_path: Path, contract: Contract) -> None:
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    core, reg = _core(store, contract, Clock())
    stranger = Prediction(
        model="nope",
        model_version=1,
        data_version="x",
        request_id="r",
        inputs={},
        outputs={},
        latency_ms=1,
    )
    assert core.on_predictions([stranger]) == []
    assert (
        _value(
            reg, "flywheel_monitoring_rejected_total", topic="predictions", reason="unknown_model"
        )
        == 1
    )
    assert core.predlog.pending == 0


def test_old_versions_series_are_removed(
    tmp_path: Path, contract: Contract, car_loan: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    reference, analysis = car_loan
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    manifests = [
        seed_version(store, contract, reference.iloc[:1000], v, champion=v == 3) for v in (1, 2, 3)
    ]
    core, reg = _core(store, contract, Clock(), window_rows=100, max_versions=2)
    for m in manifests:
        core.on_predictions(
            list(prediction_events(contract, analysis.iloc[:100], m, role="shadow"))
        )
    series = {
        s.labels["version"]
        for metric in reg.collect()
        if metric.name == "flywheel_monitoring_drift_score"
        for s in metric.samples
    }
    assert series == {"2", "3"}


# --- the per-request wire format, durable join state, the log read once -----------------


def _batch(key: str, rows: int, **extra: Any) -> PredictionBatch:
    return PredictionBatch(
        id=key,
        model="m",
        model_version=1,
        data_version="d1",
        request_id=f"r-{key}",
        latency_ms=1.0,
        rows=rows,
        inputs={"x": [float(i) for i in range(rows)], "c": ["a"] * (rows - 1) + [None]},
        outputs={"label": [i % 2 for i in range(rows)], "probabilities": [[0.4, 0.6]] * rows},
        **extra,
    )


def test_a_request_is_one_event_whose_rows_keep_their_prediction_ids() -> None:
    batch = _batch(
        "k1",
        3,
        shadow={
            "model_version": 2,
            "data_version": "d2",
            "outputs": {"label": [1, 1, 1], "probabilities": [[0.1, 0.9]] * 3},
        },
    )
    rows = decode_predictions(batch.model_dump_json().encode())
    assert [r.id for r in rows] == ["k1-0", "k1-1", "k1-2"]
    assert {routing_key(r.id) for r in rows} == {"k1"}  # what feedback is re-keyed by
    assert rows[2].inputs == {"x": 2.0, "c": None}
    assert rows[1].outputs == {"label": 1, "probabilities": [0.4, 0.6]}
    assert rows[0].shadow == {
        "model_version": 2,
        "data_version": "d2",
        "outputs": {"label": 1, "probabilities": [0.1, 0.9]},
    }
    # Schema version 1 (one row per message) still decodes, e.g. during an upgrade.
    (old,) = decode_predictions(rows[0].model_dump_json().encode())
    assert old.id == "k1-0"
    with pytest.raises(ValidationError, match="every input and output column"):
        PredictionBatch.model_validate_json(
            batch.model_dump_json().replace('"rows":3', '"rows":4').encode()
        )


def test_a_group_of_requests_is_one_event_whose_rows_keep_their_prediction_ids() -> None:
    a, b = _batch("k1", 2), _batch("k2", 3)
    group = PredictionGroup(
        id="k1",
        model="m",
        model_version=1,
        data_version="d1",
        requests={
            "id": ["k1", "k2"],
            "request_id": ["r-k1", "r-k2"],
            "created": [1e9, 1e9 + 1],
            "latency_ms": [1.0, 2.0],
            "rows": [2, 3],
        },
        inputs={f: a.inputs[f] + b.inputs[f] for f in a.inputs},
        outputs={k: a.outputs[k] + b.outputs[k] for k in a.outputs},
    )
    rows = decode_predictions(group.model_dump_json().encode())
    assert [r.id for r in rows] == ["k1-0", "k1-1", "k2-0", "k2-1", "k2-2"]
    assert [routing_key(r.id) for r in rows] == ["k1"] * 2 + ["k2"] * 3
    assert [r.request_id for r in rows] == ["r-k1"] * 2 + ["r-k2"] * 3
    assert rows[2].latency_ms == 2.0
    assert rows[2].created.timestamp() == 1e9 + 1
    assert [r.inputs for r in rows[1:3]] == [{"x": 1.0, "c": None}, {"x": 0.0, "c": "a"}]
    assert group.prediction_ids() == [r.id for r in rows]
    with pytest.raises(ValidationError, match="every input and output column"):
        decode_predictions(group.model_dump_json().replace('"rows":[2,3]', '"rows":[2,4]').encode())
    with pytest.raises(ValidationError, match="every request column"):
        decode_predictions(group.model_dump_json().replace('"rows":[2,3]', '"rows":[5]').encode())


def test_join_snapshots_restore_one_partition_with_its_offsets(
    tmp_path: Path, contract: Contract
) -> None:
    part = Partitioner(4)
    ids = [f"key{i}-0" for i in range(40)]
    join = LabelJoin(100, 3600, part)
    for i, pid in enumerate(ids):
        join.add(pid, _pending(at=float(i)))
    join.hold(EarlyLabel("late7-0", 1, 5.0))
    joined_id = next(pid for pid in ids if part(pid) == part("late7-0"))
    assert join.match(joined_id) is not None
    store = ArtifactStore(f"file://{tmp_path}")
    core, _ = _core(store, contract, Clock())
    core.join = join
    snapshots = PartitionSnapshots(store, "g", clock=lambda: 50.0)
    k = part("late7-0")
    offsets = {"predictions": 12, "feedback.routed": 3}
    key = snapshots.save(core, k, offsets)
    assert key.endswith(f"/{k}/12-3.json")  # named by the offsets the commit will point at
    mine = {pid for pid in ids if part(pid) == k}
    assert 0 < len(mine) < len(ids)  # the ids spread over partitions

    fresh = LabelJoin(100, 3600, part)
    restarted, _ = _core(store, contract, Clock())
    restarted.join = fresh
    loader = PartitionSnapshots(snapshots.store, "g", clock=lambda: 10.0)
    assert loader.read(k, {"predictions": 11, "feedback.routed": 3}) is None
    snap = loader.read(k, offsets)
    assert snap is not None
    loader.restore(restarted, [snap])
    assert len(fresh) == len(mine) - 1
    waiting = fresh.match(sorted(mine - {joined_id})[0])
    assert waiting is not None
    assert waiting.model == "m"
    assert fresh.take_early("late7-0") is not None
    assert fresh.was_joined(joined_id)  # a second copy of its label is known after a restart
    core.drop_partitions({k})  # taken over by another replica
    assert len(join) == len(ids) - len(mine)
    assert not join.was_joined(joined_id)
    assert join.early == 0


def test_the_log_reads_each_replayed_prediction_once(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    log = PredictionLog(store, flush_rows=10_000, flush_s=60)
    rows = _batch("k", 5).predictions()
    for p in rows[:3]:
        log.add_prediction(p)
    log.flush()
    for p in rows:  # a crash before the commit: the first three are replayed
        log.add_prediction(p)
    log.add_feedback(Feedback(prediction_id="k-0", label=1), "m", 1, "2026-12-01T00:00:00")
    log.flush()
    log.add_feedback(Feedback(prediction_id="k-0", label=1), "m", 1, "2026-12-01T00:00:01")
    log.flush()
    table = read_log(store, "predictions")
    assert sorted(table["prediction_id"].to_pylist()) == [f"k-{i}" for i in range(5)]
    assert read_log(store, "feedback").num_rows == 1
    assert len(find_feedback(store, "k-0")) == 1
    assert read_log(store, "predictions", "other").num_rows == 0


async def test_the_router_keys_feedback_by_its_prediction_and_counts_the_invalid() -> None:
    registry = CollectorRegistry()
    router = FeedbackRouter(
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        "g-router",
        MonitoringMetrics(registry),
        structlog.get_logger(),
        spawn=lambda coro, name: asyncio.create_task(coro, name=name),
    )
    assert router.route(b'{"prediction_id": "0a1b-7", "label": 1}') == b"0a1b"
    assert router.route(b'{"prediction_id": "no-dash-here-3", "label": "x"}') == b"no-dash-here"
    assert router.route(b'{"label": 1}') is None
    assert router.route(b"not json") is None
    invalid = {"topic": "feedback", "reason": "invalid"}
    assert registry.get_sample_value("flywheel_monitoring_rejected_total", invalid) == 2
