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


def _numbered(ids: list[str], times: list[Any]) -> pa.Table:
    """A learnable toy table with the given (string) ids and event times."""
    return toy_table(len(ids)).set_column(0, "id", pa.array(ids)).set_column(1, "ts", times)


def test_the_holdout_is_the_latest_by_real_time_never_by_text() -> None:
    # As text, "10000" sorts before "9999" and 10000 seconds ("10000") before a year
    # ("9999"); as times and numbers the order is the real one.
    n = 300
    ids = [str(9_900 + i) for i in range(n)]  # "9900" ... "10199"
    seconds = pa.array([1_700_000_000 + 60 * i for i in range(n)])
    shuffled = np.random.default_rng(3).permutation(n)
    table = _numbered(ids, seconds).take(pa.array(shuffled))
    data = split(toy_contract(), table, holdout_fraction=0.2)
    assert (data.holdout["first_id"], data.holdout["last_id"]) == ("10140", "10199")
    assert data.holdout["future"] is True
    assert "not future data" not in data.holdout["description"]
    assert data.holdout["first_event_time"] == "2023-11-15T02:13:20+00:00"
    assert data.t_train is not None
    assert (np.diff(data.t_train) > 0).all()
    # Times stored as text by an older ingestion are read by the same rule.
    legacy = _numbered(ids, pa.array([str(v) for v in seconds.to_pylist()]))
    assert split(toy_contract(), legacy, holdout_fraction=0.2).holdout["first_id"] == "10140"


def test_ties_are_broken_by_numeric_id_and_the_holdout_is_said_not_future() -> None:
    n = 300
    table = _numbered([str(9_900 + i) for i in range(n)], pa.array(["2016"] * n))
    data = split(toy_contract(), table, holdout_fraction=0.2)
    assert (data.holdout["first_id"], data.holdout["last_id"]) == ("10140", "10199")
    assert data.holdout["future"] is False
    assert (
        "not future data: every row shares the event time 2016-01-01"
        in (data.holdout["description"])
    )
    # Ids that are not all integers sort as text.
    mixed = _numbered([f"a{9_900 + i}" for i in range(n)], pa.array(["2016"] * n))
    assert split(toy_contract(), mixed, holdout_fraction=0.2).holdout["last_id"] == "a9999"


def test_without_an_event_time_the_holdout_is_said_not_future() -> None:
    contract = toy_contract(event_time=None)
    data = split(contract, toy_table(300), holdout_fraction=0.2)
    assert data.holdout["future"] is False
    assert data.t_train is None
    assert "the contract has no event time" in data.holdout["description"]


def test_a_cut_inside_one_event_time_is_said_not_future() -> None:
    # 300 rows at 3 times: the 20 % holdout starts inside the last time.
    table = _numbered([str(i) for i in range(300)], pa.array([2015 + i // 100 for i in range(300)]))
    data = split(toy_contract(), table, holdout_fraction=0.2)
    assert data.holdout["future"] is False
    assert "the training rows reach the holdout's first event time" in (data.holdout["description"])
