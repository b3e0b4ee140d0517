"""Training data: time-ordered holdout, ties broken by id, the corrupt-label hook.

Also holds the small helpers the other training tests share: a toy contract and a
way to write a dataset version straight into the catalog (as validation would).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from services.training.data import TrainingDataError, corrupt_labels, split
from shared.contract import Contract, parse_contract
from shared.datasets import BatchRef, DatasetCatalog, DatasetVersion
from shared.store import ArtifactStore


def toy_contract(**overrides: Any) -> Contract:
    """A small classification contract with a group attribute."""
    body: dict[str, Any] = {
        "name": "toy",
        "task": "classification",
        "id": "id",
        "event_time": "ts",
        "label": {"name": "y", "classes": [0, 1]},
        "features": [
            {"name": "x", "type": "float"},
            {"name": "k", "type": "int", "nullable": True},
            {"name": "c", "type": "category", "values": ["a", "b", "c"]},
            {"name": "g", "type": "category", "values": ["u", "v"]},
        ],
        "groups": ["g"],
        "training": {"min_rows": 500, "min_new_rows": 1000, "search_time_budget_s": 1},
        "promotion": {"max_fairness_gap": 0.9},
    }
    for key, value in overrides.items():
        body[key] = {**body[key], **value} if isinstance(body.get(key), dict) else value
    return parse_contract(body)


def toy_table(n: int, seed: int = 0, start_id: int = 0) -> pa.Table:
    """``n`` learnable rows of the toy contract, event time increasing with id."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    k = rng.integers(0, 5, n).astype(float)
    k[rng.random(n) < 0.05] = np.nan
    c = rng.choice(["a", "b", "c"], n)
    g = rng.choice(["u", "v"], n)
    y = ((x + (c == "a") + 0.3 * k + rng.normal(0, 0.7, n)) > 1.2).astype(int)
    ids = np.arange(start_id, start_id + n)
    return pa.table(
        {
            "id": ids,
            "ts": ids // 100,
            "x": x,
            "k": pa.array(k, from_pandas=True),
            "c": c,
            "g": g,
            "y": y,
        }
    )


def add_dataset(
    store: ArtifactStore, dataset: str, tables: list[pa.Table], parent: str | None = None
) -> DatasetVersion:
    """Write ``tables`` as batches of a new dataset version, as validation does."""
    refs = []
    for table in tables:
        sha, uri = store.put_parquet(f"datasets/{dataset}/batches", table)
        refs.append(
            BatchRef(
                batch_id=sha, uri=uri, sha256=sha, rows=table.num_rows, raw_uri=uri, report_uri=uri
            )
        )
    version = DatasetVersion(
        dataset=dataset, parent=parent, batches=refs, rows=sum(t.num_rows for t in tables)
    )
    return DatasetCatalog(store).add(version)


def test_holdout_is_the_latest_event_time_then_id() -> None:
    table = toy_table(1000)
    shuffled = table.take(pa.array(np.random.default_rng(1).permutation(1000)))
    data = split(toy_contract(), shuffled, holdout_fraction=0.2)
    assert len(data.x_holdout) == 200
    assert len(data.x_train) == 800
    assert data.holdout["first_id"] == "800"
    assert data.holdout["last_id"] == "999"
    assert data.holdout["method"] == "time-ordered"
    expected = np.asarray(table.column("x").to_numpy()[800:], dtype=np.float32)
    assert (data.x_holdout["x"].to_numpy() == expected).all()


def test_holdout_words_say_when_event_times_tie() -> None:
    table = toy_table(500).set_column(1, "ts", pa.array([2015] * 500))
    data = split(toy_contract(), table, holdout_fraction=0.2)
    assert "latest id" in data.holdout["description"]
    assert data.holdout["first_id"] == "400"


def test_max_train_rows_keeps_the_latest_training_rows() -> None:
    data = split(toy_contract(), toy_table(1000), holdout_fraction=0.2, max_train_rows=300)
    assert len(data.x_train) == 300
    assert data.holdout["train_rows_dropped"] == 500


def test_bad_data_is_a_clear_error() -> None:
    with pytest.raises(TrainingDataError, match="too few"):
        split(toy_contract(), toy_table(20), holdout_fraction=0.2)
    with pytest.raises(TrainingDataError, match="no column"):
        split(toy_contract(), toy_table(100).drop_columns(["x"]), holdout_fraction=0.2)
    bad = toy_table(100).set_column(6, "y", pa.array([7] * 100))
    with pytest.raises(TrainingDataError, match="unknown classes"):
        split(toy_contract(), bad, holdout_fraction=0.2)


def test_corrupt_labels_is_seeded() -> None:
    y = np.array([0, 1] * 500)
    flipped, n = corrupt_labels(toy_contract(), y, 0.3, seed=7)
    again, _ = corrupt_labels(toy_contract(), y, 0.3, seed=7)
    assert 200 < n < 400
    assert int((flipped != y).sum()) == n
    assert (flipped == again).all()
    assert corrupt_labels(toy_contract(), y, 0.0, seed=7)[1] == 0
