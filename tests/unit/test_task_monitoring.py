"""Monitoring per task: live metrics, group figures, prediction drift and the rollback margin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import structlog
from prometheus_client import CollectorRegistry

from services.monitoring.core import Limits, MonitoringCore, worse_by
from services.monitoring.join import LabelJoin
from services.monitoring.metrics import MonitoringMetrics
from services.monitoring.predlog import PredictionLog
from services.monitoring.quality import Labelled, QualityWindow, largest_gaps
from services.monitoring.window_drift import PredictionHistogram, prediction_value
from services.training.runtime import onnx_predictions
from services.training.trainer import train
from shared.contract import Contract
from shared.datasets import DatasetCatalog
from shared.drift import build_profile
from shared.events import Feedback, Prediction
from shared.features import table_to_frame
from shared.registry import Registry
from shared.store import ArtifactStore
from tests.unit.test_tasks import FAST, task_contract, task_table
from tests.unit.test_training_data import add_dataset

IRIS = ["virginica", "setosa", "versicolor"]


def test_multiclass_live_quality_is_accuracy_and_macro_f1_with_per_class_rates() -> None:
    w = QualityWindow(size=100, task="classification", min_group_rows=1, classes=IRIS)
    rows = [
        ("setosa", "setosa", "a"),
        ("virginica", "virginica", "a"),
        ("versicolor", "virginica", "b"),
        ("versicolor", "versicolor", "b"),
    ]
    for truth, predicted, group in rows:
        w.add(Labelled(truth, predicted, 0.5, {"g": group}))
    m = w.metrics()
    assert m["accuracy"] == pytest.approx(0.75)
    # Per class F1: virginica 2/3, setosa 1, versicolor 2/3.
    assert m["f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert "roc_auc" not in m  # one score per row cannot rank three classes
    groups = w.group_metrics("g")
    assert groups["g=b"]["fnr:versicolor"] == pytest.approx(0.5)
    assert groups["g=a"]["selection_rate:setosa"] == pytest.approx(0.5)
    assert largest_gaps(groups)["selection_rate:virginica"] == pytest.approx(0.0)


@pytest.mark.parametrize("scale", [1e-3, 1e6])
def test_regression_live_quality_has_r2_and_a_scale_free_group_gap(scale: float) -> None:
    rng = np.random.default_rng(0)
    w = QualityWindow(size=1000, task="regression", min_group_rows=10)
    truth = rng.normal(10, 2, 400) * scale
    noise = rng.normal(0, 0.5, 400) * scale
    for i, (t, e) in enumerate(zip(truth, noise, strict=True)):
        group = "a" if i % 2 else "b"
        w.add(Labelled(float(t), float(t + (2 * e if group == "a" else e)), None, {"g": group}))
    w.add(Labelled("not a number", 1.0, None, {"g": "a"}))  # left out, not a crash
    m = w.metrics()
    assert set(m) == {"mae", "rmse", "r2"}
    assert m["r2"] == pytest.approx(1 - 0.625 / 4, abs=0.05)  # noise variance 0.625, label 4
    gaps = largest_gaps(w.group_metrics("g"))
    assert set(gaps) == {"relative_mae"}
    # Group a's error is twice group b's: the gap is the same share at any scale.
    assert gaps["relative_mae"] == pytest.approx(0.25, abs=0.06)


def _outputs(contract: Contract, values: list[Any]) -> list[dict[str, Any]]:
    if contract.task == "regression":
        return [{"prediction": v} for v in values]
    classes = contract.label.classes or []
    return [
        {"label": v, "probabilities": [1.0 if c == v else 0.0 for c in classes]} for v in values
    ]


@pytest.mark.parametrize(
    ("label", "task", "steady", "shifted"),
    [
        ({"name": "y", "classes": IRIS}, "classification", IRIS * 30, ["setosa"] * 90),
        (
            {"name": "y", "type": "float"},
            "regression",
            list(np.linspace(1e6, 2e6, 90)),
            list(np.linspace(1.8e6, 3e6, 90)),
        ),
    ],
    ids=["multiclass-predicted-class", "regression-predicted-value"],
)
def test_prediction_drift_counts_what_the_task_predicts(
    label: dict[str, Any], task: str, steady: list[Any], shifted: list[Any]
) -> None:
    contract = task_contract(label, task=task)
    hist = PredictionHistogram(contract)

    def window(values: list[Any]) -> float | None:
        hist.update([prediction_value(contract, o) for o in _outputs(contract, values)])
        return hist.close()

    assert window(steady) == 0.0  # the first window is the reference
    assert window(list(reversed(steady))) == pytest.approx(0.0, abs=1e-9)
    assert (window(shifted) or 0.0) > 1.0


def test_a_binary_classifier_drifts_on_its_positive_probability() -> None:
    contract = task_contract({"name": "y", "classes": ["yes", "no"]})
    assert prediction_value(contract, {"label": "no", "probabilities": [0.3, 0.7]}) == 0.7
    hist = PredictionHistogram(contract)
    hist.update([0.1, 0.2, 0.8, 0.9])
    assert hist.close() == 0.0
    hist.update([0.95, 0.97, 0.99, 0.9])
    assert (hist.close() or 0.0) > 1.0


def test_the_rollback_margin_is_a_share_of_the_reference_for_label_unit_metrics() -> None:
    # 2% worse MAE at any scale, so the default 0.02 margin reads the same for both.
    assert worse_by("mae", 1.02e6, 1e6) == pytest.approx(0.02)
    assert worse_by("mae", 1.02e-3, 1e-3) == pytest.approx(0.02)
    assert worse_by("r2", 0.80, 0.85) == pytest.approx(0.05)
    assert worse_by("rmse", 0.9, 1.0) < 0


# --- through the monitoring core, with a model trained by the training core -------------


def _profiled(store: ArtifactStore, contract: Contract, table: pa.Table) -> str:
    """A dataset version of ``table`` with its reference profile (as validation writes)."""
    catalog = DatasetCatalog(store)
    frame = table_to_frame(contract, table)
    labels = table.column(contract.label.name).to_numpy(zero_copy_only=False)
    version = add_dataset(store, contract.name, [table])
    profile_uri = catalog.put_profile(contract.name, build_profile(contract, frame, labels))
    return catalog.add(version.model_copy(update={"profile_uri": profile_uri, "id": ""})).id


@pytest.mark.parametrize(
    ("label", "task", "live"),
    [
        ({"name": "y", "classes": [2, 0, 1]}, "classification", {"accuracy", "f1"}),
        ({"name": "y", "type": "float"}, "regression", {"mae", "rmse", "r2"}),
    ],
    ids=["multiclass", "regression"],
)
def test_the_core_reports_each_tasks_live_figures_and_prediction_drift(
    label: dict[str, Any], task: str, live: set[str], tmp_path: Path
) -> None:
    contract = task_contract(label, task=task)
    table = task_table(contract, scale=1e6)
    store = ArtifactStore(f"file://{tmp_path}")
    dataset = _profiled(store, contract, table)
    registry = Registry(store)
    train(
        contract,
        registry,
        DatasetCatalog(store),
        dataset_version=dataset,
        reason="core test",
        config=FAST,
        threads=1,
    )
    registry.set_alias(contract.name, "champion", 1, actor="test", reason="core test")
    manifest = registry.get(contract.name, 1)
    prom = CollectorRegistry()
    core = MonitoringCore(
        {contract.name: contract},
        registry,
        DatasetCatalog(store),
        MonitoringMetrics(prom),
        LabelJoin(10_000, 3600),
        PredictionLog(store, flush_rows=10_000, flush_s=60),
        structlog.get_logger("test"),
        Limits(eval_every_labels=50, window_rows=100),
    )
    core.load_aliases()
    frame = table_to_frame(contract, table)
    served = onnx_predictions(contract, registry.onnx_bytes(manifest), frame)
    rows = table.to_pylist()
    predictions = []
    for i, row in enumerate(rows):
        if task == "regression":
            outputs: dict[str, Any] = {"prediction": float(served.labels[i])}
        else:
            assert served.proba is not None
            outputs = {"label": int(served.labels[i]), "probabilities": served.proba[i].tolist()}
        predictions.append(
            Prediction(
                id=f"p{i}",
                model=contract.name,
                model_version=1,
                data_version=manifest.dataset_version,
                request_id=f"r{i}",
                inputs={f: row[f] for f in contract.feature_names},
                outputs=outputs,
                latency_ms=1.0,
            )
        )
    core.on_predictions(predictions)
    core.on_feedback([Feedback(prediction_id=f"p{i}", label=r["y"]) for i, r in enumerate(rows)])

    def gauge(name: str, **labels: str) -> float | None:
        return prom.get_sample_value(name, {"model": contract.name, "version": "1", **labels})

    values = {m: gauge("flywheel_monitoring_live_metric", metric=m) for m in live}
    assert all(v is not None for v in values.values()), values
    assert gauge("flywheel_monitoring_live_metric", metric="roc_auc") is None
    if task == "regression":
        assert (values["r2"] or 0.0) > 0.8
        gap = gauge("flywheel_monitoring_fairness_gap", attribute="g", metric="relative_mae")
        assert gap is not None
        assert gap < 0.5  # a share of the label's spread, not label units (~1e6)
    else:
        assert (values["accuracy"] or 0.0) > 0.6
        gap = gauge("flywheel_monitoring_fairness_gap", attribute="g", metric="fpr:2")
        assert gap is not None
    # Four windows of the same distribution: the predictions did not drift.
    drift = gauge("flywheel_monitoring_prediction_drift")
    assert drift is not None
    assert drift < 0.5
