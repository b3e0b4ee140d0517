"""Monitoring per task: live metrics, group figures, prediction drift and the rollback margin."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.monitoring.core import worse_by
from services.monitoring.quality import Labelled, QualityWindow, largest_gaps
from services.monitoring.window_drift import PredictionHistogram, prediction_value
from shared.contract import Contract
from tests.unit.test_tasks import task_contract

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
