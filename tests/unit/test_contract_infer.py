"""``flywheel contract infer`` / ``check``: a draft contract from data that loads and trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from services.ingestion.core import Ingestor
from services.ingestion.metrics import IngestionMetrics
from services.training.trainer import TrainConfig, train
from shared.cli.data import rows_to_events
from shared.cli.main import app
from shared.contract import load_contract
from shared.contract_infer import InferenceError, infer_contract, to_yaml
from shared.datasets import DatasetCatalog
from shared.features import onnx_input_names
from shared.registry import Registry
from shared.store import ArtifactStore
from shared.tables import read_table
from tests.conftest import CONTRACTS, need_data
from tests.unit.test_training_data import add_dataset

FAST = TrainConfig(search_budget_s=0.5, cv_folds=2, importance_rows=200, importance_repeats=1)


def sample_table(n: int = 300) -> pa.Table:
    rng = np.random.default_rng(3)
    temp = rng.normal(5, 5, n)  # below and above zero
    temp[::10] = np.nan
    colour = rng.choice(["red", "green", "blue"], n).astype(object)
    colour[::7] = None
    return pa.table(
        {
            "row id": [f"r{i}" for i in range(n)],
            "dew point": temp,
            "wind-speed": rng.integers(0, 40, n),
            "colour (paint)": pa.array(colour.tolist(), pa.string()),
            "raining?": rng.random(n) < 0.3,
            "comment": [f"free text {i}" for i in range(n)],
            "outcome": rng.choice(["late", "on time", "early"], n),
            "price": rng.gamma(2.0, 500.0, n),
            "stars": rng.integers(1, 6, n).astype(float),
            "gauge": np.where(np.arange(n) % 50 == 0, np.inf, rng.normal(0, 1, n)),
        }
    )


def test_profile_gives_types_ranges_vocabularies_nulls_and_a_task() -> None:
    table = sample_table()
    inferred = infer_contract(
        table, name="weather", label="outcome", id="row id", drop=["price", "stars"]
    )
    c = inferred.contract
    assert c.task == "classification"
    assert c.label.classes == ["early", "late", "on time"]
    assert c.id == "row id"
    assert c.feature_names == ["dew point", "wind-speed", "colour (paint)", "raining?", "gauge"]
    dew = c.feature("dew point")
    values = table.column("dew point").to_numpy()
    lo, hi = np.nanmin(values), np.nanmax(values)
    assert dew.type == "float"
    assert dew.nullable
    assert dew.min is not None
    assert dew.max is not None
    assert dew.min < lo - 0.09 * (hi - lo)  # the margin
    assert dew.max > hi + 0.09 * (hi - lo)
    wind = c.feature("wind-speed")
    assert wind.type == "int"
    assert not wind.nullable
    assert wind.min == 0  # never negative in the data: the margin stops at zero
    colour = c.feature("colour (paint)")
    assert colour.type == "category"
    assert colour.nullable
    assert colour.values == ["blue", "green", "red"]
    assert c.feature("raining?").type == "bool"
    gauge = c.feature("gauge")
    assert gauge.max is not None
    assert gauge.max < 10  # infinities are left out of the range
    assert "comment" in inferred.skipped  # 300 distinct texts: an id or free text
    timed = infer_contract(
        table.append_column("seen", pa.array(np.arange(len(table)), pa.timestamp("s"))),
        name="weather",
        label="outcome",
    )
    assert (
        timed.skipped["seen"] == "a time (timestamp[s]): pass --time 'seen' if it is the event time"
    )
    assert c.training.min_rows == 300
    assert c.promotion.primary_metric == "accuracy"
    assert not inferred.notes


def test_without_id_a_column_called_id_is_taken_else_the_draft_says_it_lacks_one() -> None:
    table = sample_table(20).rename_columns({"row id": "id"})
    assert infer_contract(table, name="w", label="outcome").contract.id == "id"
    inferred = infer_contract(sample_table(20), name="w", label="outcome")
    assert inferred.contract.id == "id"
    assert "No id column" in inferred.notes[0]
    assert inferred.skipped["row id"] == "every value is different (an id or free text)"
    assert "# To do: No id column" in to_yaml(inferred, "x.csv")


@pytest.mark.parametrize(
    ("label", "task", "classes"),
    [("price", "regression", None), ("stars", "classification", [1, 2, 3, 4, 5])],
)
def test_the_label_decides_the_task(label: str, task: str, classes: list[int] | None) -> None:
    c = infer_contract(sample_table(), name="w", label=label, drop=["outcome"]).contract
    assert c.task == task
    assert c.label.classes == classes
    assert c.promotion.primary_metric == ("mae" if task == "regression" else "accuracy")


def test_a_bool_label_is_classes_0_and_1_and_publishes_as_them() -> None:
    table = sample_table(20).append_column("late?", pa.array([True, False] * 10))
    contract = infer_contract(
        table, name="w", label="late?", id="row id", drop=["outcome"]
    ).contract
    assert contract.label.classes == [0, 1]
    assert [e["label"] for e in rows_to_events(contract, table)[:2]] == [1, 0]


def test_yaml_round_trips_through_the_loader(tmp_path: Path) -> None:
    inferred = infer_contract(sample_table(), name="weather", label="outcome", id="row id")
    path = tmp_path / "weather.yaml"
    path.write_text(to_yaml(inferred, "sample.csv"), encoding="utf-8")
    assert load_contract(path) == inferred.contract
    assert path.read_text(encoding="utf-8").startswith("# Draft contract inferred from sample.csv")


def test_unusable_input_is_a_clear_error() -> None:
    with pytest.raises(InferenceError, match="label column 'nope' is not in the file"):
        infer_contract(sample_table(), name="w", label="nope")
    with pytest.raises(InferenceError, match="no usable feature"):
        infer_contract(sample_table().select(["comment", "outcome"]), name="w", label="outcome")
    with pytest.raises(InferenceError, match="too many classes"):
        infer_contract(sample_table(), name="w", label="comment")
    twice = pa.table([[1.0], [2.0], ["a"]], names=["x", "x", "y"])
    with pytest.raises(InferenceError, match=r"appear more than once: \['x'\]"):
        infer_contract(twice, name="w", label="y")
    unnamed = sample_table(20).append_column("", pa.array(range(20)))
    assert "" in infer_contract(unnamed, name="w", label="outcome").skipped


def test_cli_infer_writes_a_draft_that_check_accepts(tmp_path: Path) -> None:
    source = tmp_path / "weather.jsonl"
    rows = sample_table(50).drop_columns(["comment", "gauge"]).to_pylist()
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "weather.yaml"
    runner = CliRunner()
    args = ["contract", "infer", str(source), "--name", "weather", "--label", "outcome"]
    result = runner.invoke(app, [*args, "--id", "row id", "-o", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["contract", "check", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{out}: ok (classification, 6 features)" in result.output
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 1  # no silent overwrite
    assert "exists" in result.output


def test_cli_check_prints_file_field_what_and_exits_2(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    inferred = infer_contract(sample_table(), name="good", label="outcome")
    good.write_text(to_yaml(inferred, "x"), encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        to_yaml(inferred, "x").replace("name: good", "name: bad").replace("wind-speed", "''"),
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["contract", "check", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"{good}: ok" in result.output
    assert f"{bad}: features.1.name: a name must not be empty" in result.output


# --- every shipped data file gives a contract that loads and trains -------------------------

SHIPPED = [
    ("census_employment.pq", "employment_MA_reference.pq", "employed", "id", "year",
     ["prediction", "predicted_probability"]),
    ("car_loan.csv", "synthetic_car_loan_reference.csv", "repaid", "id", "timestamp",
     ["y_pred", "y_pred_proba"]),
    ("iris.jsonl", "iris_reference.jsonl", "species", "id", "measured_at", []),
    ("diabetes.pq", "diabetes_reference.pq", "disease_progression", "patient_id", "visit_time",
     []),
]  # fmt: skip


def ingest(store: ArtifactStore, contract: Any, table: pa.Table) -> pa.Table:
    """The file's rows through ``flywheel publish``'s mapping and ingestion's checks."""
    ingestor = Ingestor(
        {contract.name: contract},
        store,
        IngestionMetrics(CollectorRegistry()),
        batch_rows=10**6,
        batch_seconds=60.0,
        dedup_window=10**6,
    )

    class Msg:
        def __init__(self, value: bytes, offset: int):
            self.value, self.offset, self.topic, self.partition = value, offset, "data.events", 0

    events = rows_to_events(contract, table)
    letters = ingestor.process([Msg(json.dumps(e).encode(), i) for i, e in enumerate(events)])
    assert not letters, letters[:3]
    tables = ingestor.detach()
    return tables[contract.name]


@pytest.mark.parametrize(
    ("name", "file", "label", "id_col", "time_col", "drop"), SHIPPED, ids=[s[0] for s in SHIPPED]
)
def test_inferred_contract_of_each_shipped_file_loads_and_trains(
    tmp_path: Path, name: str, file: str, label: str, id_col: str, time_col: str, drop: list[str]
) -> None:
    [path] = need_data(file)
    model = name.split(".")[0].replace("_", "")
    table = read_table(path)
    inferred = infer_contract(
        table, name=model, label=label, id=id_col, event_time=time_col, drop=drop
    )
    contract_path = tmp_path / f"{model}.yaml"
    contract_path.write_text(to_yaml(inferred, file), encoding="utf-8")
    contract = load_contract(contract_path)
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    rows = ingest(store, contract, table.slice(0, 1200))
    version = add_dataset(store, model, [rows])
    result = train(
        contract,
        Registry(store),
        DatasetCatalog(store),
        dataset_version=version.id,
        reason="inferred contract",
        config=FAST,
        threads=1,
    )
    manifest = result.manifest
    assert manifest.version == 1
    assert manifest.features == contract.feature_names
    metric = "mae" if contract.task == "regression" else "accuracy"
    assert np.isfinite(manifest.metrics[metric])
    assert Registry(store).get(model, 1).onnx_sha256 == manifest.onnx_sha256


@pytest.mark.parametrize(("model", "file"), [("iris", "iris_reference.jsonl"),
                                             ("diabetes", "diabetes_reference.pq")])  # fmt: skip
def test_shipped_small_contracts_train_on_their_reference_files(
    tmp_path: Path, model: str, file: str
) -> None:
    [path] = need_data(file)
    contract = load_contract(CONTRACTS / f"{model}.yaml")
    store = ArtifactStore(f"file://{tmp_path / 'store'}")
    rows = ingest(store, contract, read_table(path))
    assert rows.num_rows >= contract.training.min_rows
    version = add_dataset(store, model, [rows])
    result = train(
        contract,
        Registry(store),
        DatasetCatalog(store),
        dataset_version=version.id,
        reason="shipped contract",
        config=FAST,
        threads=1,
    )
    failed = {k: g.detail for k, g in result.manifest.gates.items() if not g.passed}
    assert result.passed, failed  # parity, baseline and fairness gates on small data
    assert result.manifest.onnx_inputs == onnx_input_names(contract)
