"""The retrain policy, its idempotence keys, the offset tracker and the gates."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from services.training.deploy import planned_action
from services.training.gates import all_passed, evaluate_gates
from services.training.offsets import OffsetTracker
from services.training.policy import Reason, decide, reasons, request_kind, trigger_key
from shared.events import DatasetValidated, DriftSummary, RetrainRequest
from shared.registry import ModelManifest, Parity
from tests.unit.test_training_data import toy_contract

PARITY_OK = Parity(passed=True, rows=10, label_agreement=1.0, max_abs_diff=0.0, tolerance=1e-5)


def manifest(rows: int) -> ModelManifest:
    return ModelManifest(
        model="toy",
        version=3,
        task="classification",
        dataset_version="d",
        code_version="c",
        estimator="linear",
        seed=1,
        features=["x"],
        parity=PARITY_OK,
        onnx_uri="u",
        onnx_sha256="s",
        training_time_s=1.0,
        reason="r",
        dataset_rows=rows,
    )


def event(drifted: bool = False) -> DatasetValidated:
    return DatasetValidated(
        dataset="toy",
        dataset_version="d",
        rows=0,
        new_rows=0,
        batch_ids=[],
        report_uri="r",
        drift=DriftSummary(drifted=drifted, drifted_features=["x"] if drifted else []),
    )


def kinds(**kw: object) -> list[str]:
    base: dict[str, object] = {"last": None, "rows": 0, "validated": [], "requests": []}
    return [r.kind for r in reasons(toy_contract(), **{**base, **kw})]  # type: ignore[arg-type]


def test_first_model_needs_min_rows() -> None:
    assert kinds(rows=499) == []
    assert kinds(rows=500) == ["first-model"]
    request = RetrainRequest(model="toy", reason="please")
    assert kinds(rows=499, requests=[request]) == []


def test_retrain_on_new_rows_drift_schedule_and_requests() -> None:
    last = manifest(rows=2000)
    assert kinds(last=last, rows=2999) == []
    assert kinds(last=last, rows=3000) == ["new-rows"]
    assert kinds(last=last, rows=2000, validated=[event(drifted=True)]) == ["drift"]
    assert kinds(last=last, rows=2000, schedule_period=7) == ["schedule:7"]
    request = RetrainRequest(model="toy", reason="labels fixed", requested_by="monitoring")
    [why] = reasons(toy_contract(), last=last, rows=2000, validated=[], requests=[request, request])
    assert why.kind == "request:labels fixed"
    assert why.text == "requested by monitoring: labels fixed"
    no_drift = toy_contract(training={"retrain_on_drift": False})
    assert reasons(no_drift, last=last, rows=2000, validated=[event(True)], requests=[]) == []


def test_monitoring_requests_are_keyed_by_their_trigger_kind_not_their_words() -> None:
    drift = [
        RetrainRequest(
            model="toy",
            reason=f"drift on x (psi {p})",
            requested_by="monitoring",
            evidence={"trigger": "drift"},
        )
        for p in (0.3, 0.4)
    ]
    assert {request_kind(r) for r in drift} == {"drift"}
    quality = RetrainRequest(
        model="toy", reason="live roc_auc 0.6", evidence={"trigger": "quality"}
    )
    assert request_kind(quality) == "quality"
    assert request_kind(RetrainRequest(model="toy", reason="new labels")) == "request:new labels"
    last = manifest(rows=2000)
    why = reasons(toy_contract(), last=last, rows=2000, validated=[], requests=drift)
    assert [r.kind for r in why] == ["drift"]


def test_drift_on_data_already_trained_on_waits_for_new_data() -> None:
    drift = Reason("drift", "requested by monitoring: drift on x")
    request = Reason("request:labels fixed", "requested by user: labels fixed")
    on_old = decide([drift, request], dataset_version="d1", trained_on={"d1": 3}, handled=())
    assert on_old.train == [request]  # a person's request still trains
    assert on_old.defer == [drift]
    assert on_old.trained_by == 3
    only_drift = decide([drift], dataset_version="d1", trained_on={"d1": 3}, handled=())
    assert (only_drift.train, only_drift.defer) == ([], [drift])
    # New data: the waiting drift trains on its own, or joins the run's other reasons.
    new_data = decide([], dataset_version="d2", trained_on={"d1": 3}, handled=(), waiting=[drift])
    assert new_data.train == [drift]
    rows = Reason("new-rows", "1000 new rows")
    joined = decide([rows], dataset_version="d2", trained_on={"d1": 3}, handled=(), waiting=[drift])
    assert joined.train == [rows, drift]
    # Drift that outlives the model trained for it waits again; a replayed request is handled.
    again = decide([drift], dataset_version="d2", trained_on={"d1": 3, "d2": 4}, handled={"drift"})
    assert (again.train, again.defer) == ([], [drift])
    replay = decide([request], dataset_version="d2", trained_on={"d2": 4}, handled={request.kind})
    assert (replay.train, replay.handled) == ([], [request])
    first = decide([drift], dataset_version="d2", trained_on={"d1": 3}, handled=())
    assert first.train == [drift]  # drift on data no model saw yet: train


def test_trigger_keys_are_stable_and_distinct() -> None:
    assert trigger_key("toy", "d1", "drift") == trigger_key("toy", "d1", "drift")
    assert trigger_key("toy", "d1", "drift") != trigger_key("toy", "d2", "drift")
    assert trigger_key("toy", "d1", "drift") != trigger_key("toy", "d1", "new-rows")


def test_offsets_commit_only_up_to_the_first_record_in_flight() -> None:
    tp = TopicPartition("data.validated", 0)
    offsets = OffsetTracker()
    for offset in (5, 6, 7):
        offsets.track(tp, offset)
    offsets.done(tp, 6)
    assert offsets.committable() == {tp: 5}
    offsets.committed({tp: 5})
    assert offsets.committable() == {}
    offsets.done(tp, 5)
    assert offsets.committable() == {tp: 7}
    offsets.done(tp, 7)
    assert offsets.committable() == {tp: 8}


def test_gates_name_what_failed() -> None:
    contract = toy_contract(promotion={"min_improvement": 0.01, "max_fairness_gap": 0.1})
    groups = {
        "g": {
            "groups": {
                "u": {"small": False, "roc_auc": 0.7, "rows": 100},
                "v": {"small": False, "roc_auc": 0.9, "rows": 100},
            },
            "gaps": {"selection_rate": 0.2},
            "max_gap": 0.2,
        }
    }
    old = {
        "g": {
            "groups": {"u": {"small": False, "roc_auc": 0.8}, "v": {"small": False, "roc_auc": 0.9}}
        }
    }
    gates = evaluate_gates(
        contract,
        parity=PARITY_OK,
        metrics={"roc_auc": 0.85},
        group_metrics=groups,
        baseline_metrics={"roc_auc": 0.5},
        champion_metrics={"roc_auc": 0.845},
        champion_group_metrics=old,
    )
    assert gates["parity"].passed
    assert not gates["beats_champion"].passed
    assert not gates["fairness_gap"].passed
    assert "selection_rate across g" in gates["fairness_gap"].detail
    assert not gates["group_regression"].passed
    assert "g=u" in gates["group_regression"].detail
    assert not all_passed(gates)


def test_strategies() -> None:
    assert planned_action(toy_contract(), passed=True, has_champion=True) == "promote"
    assert planned_action(toy_contract(), passed=False, has_champion=False) is None
    canary = toy_contract(promotion={"strategy": "canary"})
    assert planned_action(canary, passed=True, has_champion=True) == "canary"
    assert planned_action(canary, passed=True, has_champion=False) == "promote"
    shadow = toy_contract(promotion={"strategy": "shadow"})
    assert planned_action(shadow, passed=True, has_champion=True) == "shadow"
    manual = toy_contract(promotion={"strategy": "manual"})
    assert planned_action(manual, passed=True, has_champion=False) is None
