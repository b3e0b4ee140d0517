"""The search's folds respect time: every validation row is later than every training row."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.ingestion.core import Ingestor
from services.ingestion.metrics import IngestionMetrics
from services.training.cpu import cpu_threads
from services.training.data import split
from services.training.folds import time_folds
from services.training.search import cv_splits, search
from services.training.trainer import TrainConfig, train
from shared.datasets import DatasetCatalog
from shared.registry import Registry
from shared.store import ArtifactStore
from tests.unit.test_ingestion_core import Msg
from tests.unit.test_training_data import add_dataset, toy_contract, toy_table


@given(
    times=st.lists(st.integers(0, 12), min_size=6, max_size=120),
    folds=st.integers(2, 5),
)
def test_time_folds_never_validate_on_the_past(times: list[int], folds: int) -> None:
    t = np.array(times)
    y = np.zeros(len(t))
    splits, words = time_folds(t, y, folds=folds, classification=False)
    if splits is None:
        assert "fold" in words
        return
    assert 2 <= len(splits) <= folds
    for past, future in splits:
        assert len(past)
        assert len(future)
        assert t[past].max() < t[future].min()
        assert not set(past) & set(future)
    starts = [t[test].min() for _, test in splits]
    assert starts == sorted(starts)


def test_one_shared_time_or_a_missing_class_falls_back_with_the_reason() -> None:
    y = np.array([0, 1] * 50)
    splits, words = time_folds(np.full(100, 7), y, folds=3, classification=True)
    assert splits is None
    assert "shares one event time" in words
    late_class = np.array([0] * 80 + [1, 0] * 10)  # class 1 only at the end
    splits, words = time_folds(np.arange(100), late_class, folds=3, classification=True)
    assert splits is None
    assert "miss a class" in words


def test_the_search_validates_on_the_future_when_rows_have_event_times() -> None:
    contract = toy_contract()
    data = split(contract, toy_table(500), holdout_fraction=0.2)
    assert data.t_train is not None
    splits, _ = cv_splits(contract, data.x_train, data.y_train, folds=3, seed=1, times=data.t_train)
    for past, future in splits:
        assert data.t_train[past].max() < data.t_train[future].min()
    with cpu_threads(1):  # OpenMP threads spin on shared cores
        found = search(
            contract, data.x_train, data.y_train, budget_s=1e-9, folds=3, seed=1, times=data.t_train
        )
        untimed = search(contract, data.x_train, data.y_train, budget_s=1e-9, folds=2, seed=1)
    assert found.cv.startswith("3 time-ordered folds")
    assert all(r.status == "ok" and len(r.cv_scores) == 3 for r in found.runs)
    assert untimed.cv == (
        "2 shuffled stratified folds, not time-ordered: the rows have no event time"
    )


def test_rows_sharing_one_time_are_cross_validated_shuffled_and_say_so() -> None:
    contract = toy_contract()
    table = toy_table(300).set_column(1, "ts", pa.array([2015] * 300))
    data = split(contract, table, holdout_fraction=0.2)
    with cpu_threads(1):
        found = search(
            contract, data.x_train, data.y_train, budget_s=1e-9, folds=2, seed=1, times=data.t_train
        )
    assert "not time-ordered: every training row shares one event time" in found.cv


def test_a_run_holds_out_the_latest_events_by_time_whatever_form_their_times_took(
    tmp_path: Path,
) -> None:
    """Events with integer ids across 9999 -> 10000 and times in mixed forms, ingested
    out of order: the run's holdout is the latest events in time and its folds
    validate on the future."""
    store = ArtifactStore(f"file://{tmp_path}")
    contract = toy_contract()
    n = 600
    rows = toy_table(n).to_pylist()
    start = datetime(2024, 3, 1, tzinfo=UTC)
    events = []
    for i, row in enumerate(rows):
        at = start + timedelta(minutes=i)
        form = i % 3
        when: Any = (
            at.isoformat()
            if form == 0
            else int(at.timestamp() * 1000)
            if form == 1
            else at.astimezone(timezone(timedelta(hours=-5))).isoformat()
        )
        features = {k: row[k] for k in ("x", "k", "c", "g")}
        events.append(
            {"dataset": "toy", "event_id": 9_700 + i, "event_time": when, "features": features}
            | {"label": row["y"]}
        )
    order = np.random.default_rng(5).permutation(n)
    ingestor = Ingestor(
        {"toy": contract},
        store,
        IngestionMetrics(CollectorRegistry()),
        batch_rows=10_000,
        batch_seconds=60,
        dedup_window=10_000,
    )
    messages = [Msg(json.dumps(events[j]).encode(), k) for k, j in enumerate(order)]
    assert ingestor.process(messages) == []
    (batch,) = ingestor.flush()
    version = add_dataset(store, "toy", [store.get_parquet(batch.uri)])
    result = train(
        contract,
        Registry(store),
        DatasetCatalog(store),
        dataset_version=version.id,
        reason="test",
        config=TrainConfig(search_budget_s=0.5, cv_folds=3, importance_rows=200),
        threads=1,
    )
    extra = result.manifest.model_extra or {}
    holdout = extra["holdout"]
    assert (holdout["first_id"], holdout["last_id"]) == ("10180", "10299")
    assert holdout["first_event_time"] == (start + timedelta(minutes=480)).isoformat()
    assert holdout["future"] is True
    assert extra["search"]["folds"].startswith("3 time-ordered folds")
    assert any("3 time-ordered folds" in line for line in extra["card"])
