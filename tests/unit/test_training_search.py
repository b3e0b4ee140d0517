"""The model search: the row cap, the minimum search, the ensemble on its members' fits,
the tree encoding, and the refit of the winner on every training row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.model_selection import cross_validate

from services.training.cpu import search_process
from services.training.data import split
from services.training.estimators import BOOSTING, GRIDS, LINEAR, VOTING, describe, make_estimator
from services.training.evaluation import (
    importance,
    importance_metric,
    metric_value,
    sklearn_predictions,
)
from services.training.reproduce import reproduce
from services.training.runtime import predictor
from services.training.scoring import improvement
from services.training.search import (
    Run,
    _cross_validate,
    _folds,
    evaluate_ensemble,
    expected_seconds,
    search,
    search_rows,
)
from services.training.trainer import BASELINE_PARAMS, TrainConfig, finish, fit, prepare, train
from shared.contract import ContractError
from shared.datasets import DatasetCatalog
from shared.features import UNKNOWN_CODE, as_served, build_pipeline, onnx_feeds, to_onnx
from shared.registry import Registry
from shared.store import ArtifactStore
from tests.unit.test_training_data import add_dataset, toy_contract, toy_table

FAST = TrainConfig(search_budget_s=0.5, cv_folds=2, importance_rows=300, importance_repeats=1)
ENSEMBLE = {"members": [[LINEAR, GRIDS[LINEAR][0]], [BOOSTING, GRIDS[BOOSTING][0]]]}


def toy_split(rows: int = 2000):  # type: ignore[no-untyped-def]
    contract = toy_contract()
    return contract, split(contract, toy_table(rows), holdout_fraction=0.2)


def test_search_rows_are_a_seeded_stratified_sample_in_time_order() -> None:
    contract, data = toy_split()
    x, y = data.x_train, data.y_train
    sx, sy, words = search_rows(contract, x, y, max_rows=500, seed=42)
    assert len(sx) == len(sy) == 500
    assert abs(sy.mean() - y.mean()) < 0.01
    assert list(sx.index) == sorted(sx.index)
    assert len(set(sx.index)) == 500
    again, _, _ = search_rows(contract, x, y, max_rows=500, seed=42)
    assert list(again.index) == list(sx.index)
    assert "500 of the 1600 training rows, stratified by label" in words
    same_x, same_y, words = search_rows(contract, x, y, max_rows=5000, seed=42)
    assert same_x is x
    assert same_y is y
    assert words == "all 1600 training rows"
    assert search_rows(contract, x, y, max_rows=None, seed=42)[0] is x


def test_the_search_respects_the_row_cap_and_records_it() -> None:
    contract, data = toy_split()
    found = search(
        contract, data.x_train, data.y_train, budget_s=60, folds=2, seed=42, max_rows=400
    )
    assert (found.rows, found.max_rows) == (400, 400)
    assert "400 of the 1600" in found.sample
    assert not found.exhausted
    assert len(found.runs) == len(GRIDS[LINEAR]) + len(GRIDS[BOOSTING]) + 1


def test_the_minimum_search_compares_both_families_and_their_ensemble() -> None:
    contract, data = toy_split()
    found = search(
        contract, data.x_train, data.y_train, budget_s=1e-9, folds=2, seed=42, max_rows=400
    )
    assert [r.family for r in found.runs] == [LINEAR, BOOSTING, VOTING]
    assert all(r.status == "ok" and len(r.cv_scores) == 2 for r in found.runs)
    assert found.exhausted
    assert len(found.not_run) == len(GRIDS[LINEAR]) + len(GRIDS[BOOSTING]) - 2
    assert "not refitted" in (found.runs[2].note or "")


@pytest.mark.parametrize("metric", ["roc_auc", "accuracy", "log_loss"])
def test_the_ensemble_scored_on_its_members_fits_equals_cross_validating_it(
    metric: str,
) -> None:
    contract, data = toy_split()
    x, y = data.x_train, data.y_train
    fits = []
    for family, params in ENSEMBLE["members"]:
        _, fitted = _cross_validate(contract, family, params, x, y, metric=metric, folds=3, seed=7)
        fits.append(fitted)
    run = evaluate_ensemble(contract, ENSEMBLE, fits, x, y, metric=metric, folds=3, seed=7)
    pipeline = build_pipeline(contract, make_estimator(contract.task, VOTING, ENSEMBLE, 7))
    scorer = {"roc_auc": "roc_auc", "accuracy": "accuracy", "log_loss": "neg_log_loss"}[metric]
    refitted = cross_validate(pipeline, x, y, cv=_folds(contract, 3, 7), scoring=scorer)
    sign = -1.0 if scorer.startswith("neg_") else 1.0
    assert run.cv_scores == [sign * float(s) for s in refitted["test_score"]]


def test_trees_see_ordinal_codes_and_export_with_parity_even_for_unknown_values() -> None:
    contract, data = toy_split()
    tree = build_pipeline(contract, make_estimator(contract.task, BOOSTING, GRIDS[BOOSTING][0], 1))
    tree.fit(data.x_train, data.y_train)
    assert tree.named_steps["prep"].transform(data.x_train).shape[1] == 4  # one per feature
    ensemble = build_pipeline(contract, make_estimator(contract.task, VOTING, ENSEMBLE, 1))
    ensemble.fit(data.x_train, data.y_train)
    x = data.x_holdout.copy()
    x.loc[x.index[:5], "c"] = "never-seen"
    codes = tree.named_steps["prep"].named_transformers_["cat"].transform(x[["c", "g"]])
    assert (codes[:5, 0] == UNKNOWN_CODE).all()
    for pipeline in (tree, ensemble):
        session = ort.InferenceSession(
            to_onnx(pipeline, contract), providers=["CPUExecutionProvider"]
        )
        labels, proba = session.run(None, onnx_feeds(contract, x))
        assert (labels == pipeline.predict(x)).all()
        assert np.abs(proba - pipeline.predict_proba(x)).max() < 1e-5


def test_importance_on_the_exported_model_equals_shuffling_the_raw_features() -> None:
    contract, data = toy_split()
    pipeline = build_pipeline(
        contract, make_estimator(contract.task, LINEAR, GRIDS[LINEAR][0], 1)
    ).fit(data.x_train, data.y_train)
    x, y = data.x_holdout.iloc[-300:].copy(), data.y_holdout[-300:]
    x["g"] = "u"  # a constant feature: shuffling it cannot change a prediction
    onnx = to_onnx(pipeline, contract)
    found = importance(
        contract, predictor(contract, onnx), onnx_feeds(contract, x), y, repeats=2, seed=3
    )
    # The same shuffles of the raw columns, scored through scikit-learn on the values
    # the graph receives.
    metric = importance_metric(contract)
    served = as_served(contract, x)

    def score(frame: pd.DataFrame) -> float:
        return metric_value(contract, metric, y, sklearn_predictions(contract, pipeline, frame))

    base = score(served)
    expected = {}
    for position, name in enumerate(contract.feature_names):
        rng = np.random.default_rng([3, position])
        drops = []
        for _ in range(2):
            shuffled = served.copy()
            shuffled[name] = served[name].to_numpy()[rng.permutation(len(y))]
            drops.append(improvement(metric, base, score(shuffled)))
        expected[name] = float(np.mean(drops))
    assert {r["feature"]: pytest.approx(expected[r["feature"]], abs=1e-6) for r in found} == (
        expected
    )
    assert [r["mean"] for r in found] == sorted((r["mean"] for r in found), reverse=True)
    assert found[0]["feature"] in {"x", "c", "k"}
    assert found[0]["mean"] > 0.01
    assert {"feature": "g", "mean": 0.0, "std": 0.0} in found


def test_the_winner_is_refit_on_every_training_row(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    contract = toy_contract(training={"search_max_rows": 500})
    version = add_dataset(store, "toy", [toy_table(2000)])
    registry, catalog = Registry(store), DatasetCatalog(store)
    result = train(
        contract,
        registry,
        catalog,
        dataset_version=version.id,
        reason="test",
        config=FAST,
        threads=1,
    )
    extra = result.manifest.model_extra or {}
    assert extra["search"]["rows"] == 500
    assert extra["search"]["max_rows"] == 500
    assert extra["holdout"]["train_rows"] == 1600
    [record] = registry.runs("toy")
    assert (record["search_rows"], record["search_max_rows"], record["refit_rows"]) == (
        500,
        500,
        1600,
    )
    assert any("500 of the 1600 training rows" in line for line in extra["card"])
    # Reproduction fits the recorded estimator on all 1,600 rows: a model fitted on the
    # 500 searched rows would not match it.
    assert reproduce(contract, registry, catalog, 1, threads=1).passed


def test_the_row_cap_is_validated() -> None:
    assert toy_contract().training.search_max_rows == 10_000
    assert toy_contract(training={"search_max_rows": None}).training.search_max_rows is None
    with pytest.raises(ContractError, match="search_max_rows"):
        toy_contract(training={"search_max_rows": 10})


def test_the_search_in_its_worker_process_scores_as_in_the_calling_thread() -> None:
    contract, data = toy_split()
    args = (contract, data.x_train, data.y_train)
    kwargs: dict[str, Any] = {"budget_s": 60, "folds": 2, "seed": 42, "max_rows": 400}
    here = search(*args, **kwargs)
    pool = search_process()
    try:
        leaders: list[str] = []
        there = search(
            *args,
            **kwargs,
            executor=pool,
            threads=1,
            on_leader=lambda family, params: leaders.append(describe(family, params)),
        )
    finally:
        pool.shutdown()
    assert [(r.as_record()["name"], r.cv_scores) for r in there.runs] == [
        (r.as_record()["name"], r.cv_scores) for r in here.runs
    ]
    assert there.best.as_record()["name"] == here.best.as_record()["name"] == leaders[-1]
    assert len(set(leaders)) == len(leaders)  # each lead announced once


def test_a_candidate_expected_to_end_past_the_budget_is_not_launched() -> None:
    small = {"learning_rate": 0.1, "max_leaf_nodes": 16, "max_iter": 100}
    big = {"learning_rate": 0.1, "max_leaf_nodes": 64, "max_iter": 200}
    runs = [
        Run(LINEAR, {"C": 1.0}, [0.8], 0.8, 0.0, 1.0),
        Run(BOOSTING, small, [0.9], 0.9, 0.0, 2.0),
        Run(BOOSTING, big, [], float("nan"), float("nan"), 9.0, status="failed"),
    ]
    # Twice the trees and twice the square root of the leaves: four times the last fit.
    assert expected_seconds(BOOSTING, big, runs) == pytest.approx(8.0)
    assert expected_seconds(LINEAR, {"C": 10.0}, runs) == pytest.approx(1.0)
    assert expected_seconds(VOTING, {"members": []}, runs) == 0.0


def test_the_importance_in_the_idle_search_process_equals_the_one_computed_here(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    contract = toy_contract()
    version = add_dataset(store, "toy", [toy_table(2000)])
    config = TrainConfig(importance_rows=300, importance_repeats=2)
    prepared = prepare(contract, DatasetCatalog(store), version.id, config)
    baseline = fit(contract, LINEAR, BASELINE_PARAMS, 0, prepared)
    pool = search_process()
    try:
        spared = finish(
            contract,
            config,
            prepared,
            BOOSTING,
            GRIDS[BOOSTING][0],
            baseline,
            lambda: None,
            lambda: pool,
        )
    finally:
        pool.shutdown()
    here = finish(contract, config, prepared, BOOSTING, GRIDS[BOOSTING][0], baseline, lambda: None)
    assert spared.evaluated["feature_importance"] == here.evaluated["feature_importance"]
    assert len(here.evaluated["feature_importance"]) == len(contract.feature_names)
    assert spared.onnx == here.onnx
