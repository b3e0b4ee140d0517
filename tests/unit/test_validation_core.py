"""Validation's rules and core without Kafka: verdicts, reports, versions, replays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from services.validation.core import Validator
from services.validation.metrics import ValidationMetrics
from services.validation.rules import evaluate
from shared import rejected
from shared.cli.main import app
from shared.contract import parse_contract
from shared.datasets import DatasetCatalog
from shared.events import BatchCreated, BatchQuarantined, DatasetValidated
from shared.store import ArtifactStore

CONTRACT = parse_contract(
    {
        "name": "toy",
        "task": "classification",
        "id": "id",
        "label": {"name": "y", "classes": [0, 1]},
        "features": [
            {"name": "x", "type": "float", "min": 0, "max": 100},
            {"name": "c", "type": "category", "values": ["a", "b"]},
        ],
        "validation": {"max_row_failure_rate": 0.05, "max_outlier_share": 0.05},
    }
)


def table(n: int, start: int = 0, seed: int = 0, **cols: Any) -> pa.Table:
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {
        "id": [str(start + i) for i in range(n)],
        "event_time": [f"2024-01-{1 + i % 28:02d}" for i in range(n)],
        "x": rng.normal(50, 10, n).clip(0, 100),
        "c": rng.choice(["a", "b"], n).tolist(),
        "y": (np.arange(n) % 2).tolist(),
    }
    data.update(cols)
    return pa.table(data)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(f"file://{tmp_path}/store")


def batch_of(store: ArtifactStore, t: pa.Table) -> BatchCreated:
    sha, uri = store.put_parquet("raw/toy", t)
    return BatchCreated(dataset="toy", batch_id=sha, uri=uri, rows=t.num_rows, sha256=sha)


def validator(store: ArtifactStore) -> tuple[Validator, ValidationMetrics]:
    metrics = ValidationMetrics(CollectorRegistry())
    return Validator({"toy": CONTRACT}, store, metrics), metrics


def test_clean_batches_build_a_version_chain_with_profiles(store: ArtifactStore) -> None:
    v, metrics = validator(store)
    first = v.handle(batch_of(store, table(500)))
    second = v.handle(batch_of(store, table(300, start=500, seed=1)))
    assert isinstance(first, DatasetValidated)
    assert isinstance(second, DatasetValidated)
    assert (first.rows, second.rows, second.new_rows) == (500, 800, 300)
    assert second.parent == first.dataset_version
    assert second.drift.features["x"]["psi"] < 0.2  # same distribution
    catalog = DatasetCatalog(store)
    versions = catalog.versions("toy")
    assert [x.id for x in versions] == [first.dataset_version, second.dataset_version]
    profile = catalog.profile(versions[-1])
    assert profile is not None
    assert profile.rows == 800
    assert catalog.load_table(versions[-1]).num_rows == 800
    assert metrics.rows.labels("toy")._value.get() == 800
    report = store.get_json(second.report_uri)
    assert report["verdict"] == "accept"
    assert {r["rule"] for r in report["rules"]} >= {"range:x", "outliers:x", "duplicate_id"}


def test_few_bad_rows_are_excluded_and_counted(store: ArtifactStore) -> None:
    v, metrics = validator(store)
    t = table(100)
    x = t.column("x").to_pylist()
    x[3] = 1000.0
    c = t.column("c").to_pylist()
    c[4] = "zzz"
    ids = t.column("id").to_pylist()
    ids[5] = ids[6]
    t = table(100, x=x, c=c, id=ids)
    event = v.handle(batch_of(store, t))
    assert isinstance(event, DatasetValidated)
    assert event.new_rows == 97
    version = DatasetCatalog(store).latest("toy")
    assert version is not None
    assert version.batches[0].uri != version.batches[0].raw_uri  # filtered copy
    kept = store.get_parquet(version.batches[0].uri).column("id").to_pylist()
    assert "3" not in kept
    assert "4" not in kept
    assert kept.count("6") == 1
    for rule in ("range:x", "allowed_values:c", "duplicate_id"):
        assert metrics.row_failures.labels("toy", rule)._value.get() == 1


def test_every_excluded_row_is_recorded_with_its_event_id_rule_and_value(
    store: ArtifactStore,
) -> None:
    registry = CollectorRegistry()
    v = Validator({"toy": CONTRACT}, store, ValidationMetrics(registry))
    x = [50.0] * 100
    x[3] = 1000.0
    c = ["a"] * 100
    c[4] = "zzz"
    y: list[int | None] = [i % 2 for i in range(100)]
    y[7] = 5
    ids = [f"e{i}" for i in range(100)]
    ids[6] = ids[5]
    batch = batch_of(store, table(100, x=x, c=c, y=y, id=ids))
    event = v.handle(batch)
    assert isinstance(event, DatasetValidated)
    assert event.new_rows == 96
    assert event.rejected.rows == 4
    expected = {
        "range:x": 1,
        "allowed_values:c": 1,
        "label_values": 1,
        "duplicate_id": 1,
    }
    assert event.rejected.by_rule == expected
    record = rejected.read(store, "toy").to_pylist()
    assert store.uri_for(rejected.key("toy", batch.batch_id)) == event.rejected.uri
    lines = {(r["event_id"], r["rule"], r["column"], r["value"], r["row"]) for r in record}
    assert lines == {
        ("e3", "range:x", "x", "1000", 3),
        ("e4", "allowed_values:c", "c", "zzz", 4),
        ("e5", "duplicate_id", "id", "e5", 6),
        ("e7", "label_values", "y", "5", 7),
    }
    assert {r["batch_id"] for r in record} == {batch.batch_id}
    catalog = DatasetCatalog(store)
    version = catalog.latest("toy")
    assert version is not None
    kept = set(catalog.load_table(version).column("id").to_pylist())
    assert not kept & {"e3", "e4", "e7"}
    for rule, n in expected.items():
        labels = {"dataset": "toy", "rule": rule}
        assert registry.get_sample_value("flywheel_validation_rejected_rows_total", labels) == n
    assert v.handle(batch).rejected == event.rejected  # a replay answers the same record
    shown = CliRunner().invoke(
        app, ["rejected", "toy", "--rule", "range:x", "--json"], env={"FLYWHEEL_STORE": store.uri}
    )
    assert shown.exit_code == 0, shown.output
    assert [(r["event_id"], r["value"]) for r in json.loads(shown.output)] == [("e3", "1000")]
    listed = CliRunner().invoke(app, ["rejected", "toy"], env={"FLYWHEEL_STORE": store.uri})
    assert "rejected rows of toy (4:" in listed.output


def test_too_many_failures_quarantine_naming_the_rule(store: ArtifactStore) -> None:
    v, metrics = validator(store)
    v.handle(batch_of(store, table(200)))
    x = [500.0 if i % 10 == 0 else 50.0 for i in range(200)]
    event = v.handle(batch_of(store, table(200, start=200, x=x)))
    assert isinstance(event, BatchQuarantined)
    assert event.failed_rules[:2] == ["row_failure_rate", "outliers:x"]
    assert "range:x" in event.failed_rules
    report = store.get_json(event.report_uri)
    assert report["verdict"] == "quarantine"
    assert {r["rule"]: r["failed"] for r in report["rules"]}["range:x"] == 20
    assert event.rejected.by_rule == {"range:x": 20}  # the rows are on record here too
    assert len(rejected.read(store, "toy", event.batch_id)) == 20
    assert DatasetCatalog(store).latest("toy").rows == 200  # type: ignore[union-attr]
    assert metrics.batches.labels("toy", "quarantine")._value.get() == 1


def test_broken_schema_is_quarantined(store: ArtifactStore) -> None:
    v, _ = validator(store)
    event = v.handle(batch_of(store, table(50).drop_columns(["c"])))
    assert isinstance(event, BatchQuarantined)
    assert event.failed_rules == ["schema"]
    assert "'c' is missing" in event.reason or "schema" in event.reason


def test_replays_are_answered_from_the_stored_outcome(store: ArtifactStore) -> None:
    v, metrics = validator(store)
    batch = batch_of(store, table(100))
    first = v.handle(batch)
    again = v.handle(batch)
    assert again == first
    assert len(DatasetCatalog(store).ids("toy")) == 1
    assert metrics.replays.labels("toy")._value.get() == 1


def test_unknown_dataset_is_quarantined(store: ArtifactStore) -> None:
    v, _ = validator(store)
    t = table(10)
    sha, uri = store.put_parquet("raw/other", t)
    event = v.handle(BatchCreated(dataset="other", batch_id=sha, uri=uri, rows=10, sha256=sha))
    assert isinstance(event, BatchQuarantined)
    assert event.failed_rules == ["unknown_dataset"]


def test_label_balance_is_a_warning_only() -> None:
    outcome = evaluate(CONTRACT, table(200, y=[0] * 200), None)
    rule = next(r for r in outcome.rules if r.rule == "label_balance")
    assert not rule.passed
    assert rule.severity == "warning"
    assert outcome.errors == []
