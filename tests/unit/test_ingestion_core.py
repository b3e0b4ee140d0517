"""Ingestion's core without Kafka: envelope checks, dedup window, batches, reload."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from services.ingestion.core import Ingestor
from services.ingestion.dedup import IdWindow
from services.ingestion.metrics import IngestionMetrics
from shared.contract import parse_contract
from shared.store import ArtifactStore

CONTRACT = parse_contract(
    {
        "name": "toy",
        "task": "classification",
        "id": "id",
        "event_time": "ts",
        "label": {"name": "y", "classes": [0, 1]},
        "features": [
            {"name": "x", "type": "float", "min": 0, "max": 10},
            {"name": "n", "type": "int"},
            {"name": "c", "type": "category", "values": ["1", "2", "a"]},
            {"name": "b", "type": "bool"},
            {"name": "opt", "type": "float", "nullable": True},
        ],
    }
)


@dataclass
class Msg:
    value: bytes | None
    offset: int
    topic: str = "data.events"
    partition: int = 0


def event(i: int, **changes: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "dataset": "toy",
        "event_id": f"e{i}",
        "event_time": f"2024-01-01T00:00:{i % 60:02d}",
        "features": {"x": 1.5, "n": 3, "c": "a", "b": True, "opt": None},
        "label": i % 2,
    }
    feats = changes.pop("features", {})
    e.update(changes)
    e["features"].update(feats)
    return e


def msgs(events: list[Any], start: int = 0) -> list[Msg]:
    out = []
    for i, e in enumerate(events):
        value = e if isinstance(e, bytes) else json.dumps(e).encode()
        out.append(Msg(value, start + i))
    return out


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(f"file://{tmp_path}/store")


def make(store: ArtifactStore, **kw: Any) -> tuple[Ingestor, IngestionMetrics]:
    metrics = IngestionMetrics(CollectorRegistry())
    args = {"batch_rows": 1000, "batch_seconds": 60.0, "dedup_window": 100, **kw}
    return Ingestor({"toy": CONTRACT}, store, metrics, **args), metrics


def count(metrics: IngestionMetrics, dataset: str, outcome: str) -> float:
    return float(metrics.events.labels(dataset, outcome)._value.get())


def test_valid_events_become_one_content_addressed_batch(store: ArtifactStore) -> None:
    ing, metrics = make(store)
    assert ing.process(msgs([event(i) for i in range(10)])) == []
    (batch,) = ing.flush()
    assert batch.rows == 10
    assert batch.uri.endswith(f"raw/toy/{batch.sha256}.parquet")
    table = store.get_parquet(batch.uri)
    assert table.column("id").to_pylist() == [f"e{i}" for i in range(10)]
    assert table.column("ts").to_pylist()[0] == "2024-01-01T00:00:00"
    assert table.schema.field("x").type == pa.float64()
    assert table.column("_source_offset").to_pylist() == list(range(10))
    assert [(o.partition, o.first, o.last) for o in batch.offsets] == [(0, 0, 9)]
    assert batch.min_event_time == "2024-01-01T00:00:00"
    assert count(metrics, "toy", "accepted") == 10
    assert ing.flush() == []


def test_lenient_forms_are_normalised_by_the_slow_path(store: ArtifactStore) -> None:
    ing, _ = make(store)
    odd = [
        event(0, features={"n": 4.0}),  # integral float for an int
        event(1, features={"c": 2}),  # integer category
        event(2, label=1.0, event_time=2015),
        event(3, event_id=77),
    ]
    assert ing.process(msgs(odd)) == []
    (batch,) = ing.flush()
    rows = {r["id"]: r for r in store.get_parquet(batch.uri).to_pylist()}
    assert rows["e0"]["n"] == 4
    assert rows["e1"]["c"] == "2"
    assert (rows["e2"]["y"], rows["e2"]["ts"]) == (1, "2015")
    assert "77" in rows


@pytest.mark.parametrize(
    ("value", "reason", "field"),
    [
        (b"{not json", "bad_json", "$"),
        (b"[1, 2]", "bad_json", "$"),
        (json.dumps(event(1, dataset="nope")).encode(), "unknown_dataset", "dataset"),
        (json.dumps({**event(1), "event_id": ""}).encode(), "bad_envelope", "event_id"),
        (json.dumps({**event(1), "features": [1]}).encode(), "bad_envelope", "features"),
        (json.dumps(event(1, features={"x": "high"})).encode(), "wrong_type", "features.x"),
        (json.dumps(event(1, features={"b": "yes"})).encode(), "wrong_type", "features.b"),
        (json.dumps(event(1, features={"n": 2.5})).encode(), "wrong_type", "features.n"),
        (json.dumps(event(1, features={"x": None})).encode(), "null_feature", "features.x"),
        (json.dumps(event(1, label=3)).encode(), "unknown_label", "label"),
        (json.dumps(event(1, label=True)).encode(), "unknown_label", "label"),
        (json.dumps(event(1, label=None)).encode(), "missing_label", "label"),
    ],
)
def test_bad_events_become_dead_letters(
    store: ArtifactStore, value: bytes, reason: str, field: str
) -> None:
    ing, metrics = make(store)
    letters = ing.process([Msg(value, 5), *msgs([event(2)], start=6)])
    assert len(letters) == 1
    (letter,) = letters
    assert letter.error.startswith(f"{reason}:")
    assert letter.field == field
    assert (letter.offset, letter.source_topic) == (5, "data.events")
    assert letter.payload == value.decode()
    (batch,) = ing.flush()
    assert batch.rows == 1  # the good neighbour still goes through
    ds = "_unknown" if reason in ("bad_json", "unknown_dataset") else "toy"
    assert metrics.dlq.labels(ds, reason)._value.get() == 1


def test_missing_feature_and_binary_payload(store: ArtifactStore) -> None:
    ing, _ = make(store)
    e = event(1)
    del e["features"]["n"]
    letters = ing.process([Msg(json.dumps(e).encode(), 0), Msg(b"\xff\x00", 1), Msg(None, 2)])
    assert [letter.error.split(":")[0] for letter in letters] == [
        "bad_json",
        "bad_json",
        "missing_feature",
    ]
    assert letters[0].payload_encoding == "base64"
    assert letters[2].field == "features.n"
    assert letters[2].event_id == "e1"


def test_duplicates_within_and_across_chunks_are_dropped(store: ArtifactStore) -> None:
    ing, metrics = make(store)
    ing.process(msgs([event(1), event(1), event(2)]))
    ing.process(msgs([event(2), event(3)], start=3))
    (batch,) = ing.flush()
    assert batch.rows == 3
    assert count(metrics, "toy", "duplicate") == 2


def test_reload_rebuilds_the_window_from_stored_batches(store: ArtifactStore) -> None:
    ing, _ = make(store)
    ing.process(msgs([event(i) for i in range(5)]))
    (first,) = ing.flush()
    again, metrics = make(store)  # a restarted process
    newest = again.reload()
    assert [b.batch_id for b in newest] == [first.batch_id]
    again.process(msgs([event(i) for i in range(7)]))
    (batch,) = again.flush()
    assert batch.rows == 2
    assert count(metrics, "toy", "duplicate") == 5


def test_due_on_rows_or_window(store: ArtifactStore) -> None:
    ing, _ = make(store, batch_rows=3, batch_seconds=5.0)
    assert not ing.due()
    ing.process(msgs([event(1)]))
    assert not ing.due()
    assert ing.due(now=1e12)
    ing.process(msgs([event(2), event(3)], start=1))
    assert ing.due()


def test_id_window_is_bounded_and_remembers_the_recent_half() -> None:
    window = IdWindow(capacity=10)
    window.add_many(str(i) for i in range(100))
    assert len(window) <= 10
    assert all(str(i) in window for i in range(95, 100))
    assert "0" not in window
    assert window.fresh(["99", "x", "x"]) == [False, True, False]


def test_a_chunk_of_two_datasets_is_split_between_them(store: ArtifactStore) -> None:
    other = CONTRACT.model_copy(update={"name": "toy2"})
    metrics = IngestionMetrics(CollectorRegistry())
    ing = Ingestor(
        {"toy": CONTRACT, "toy2": other},
        store,
        metrics,
        batch_rows=100,
        batch_seconds=60.0,
        dedup_window=100,
    )
    events = [event(i, dataset="toy2" if i % 2 else "toy") for i in range(6)]
    assert ing.process(msgs(events)) == []
    batches = {b.dataset: b for b in ing.flush()}
    assert {name: b.rows for name, b in batches.items()} == {"toy": 3, "toy2": 3}
    ids = store.get_parquet(batches["toy2"].uri).column("id").to_pylist()
    assert ids == ["e1", "e3", "e5"]
