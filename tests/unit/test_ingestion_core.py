"""Ingestion's core without Kafka: envelope checks, dedup window, batches, reload."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.ingestion.core import DLQ_PREFIX_BYTES, Ingestor
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
    assert table.column("ts").to_pylist()[0] == datetime(2024, 1, 1, tzinfo=UTC)
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("x").type == pa.float64()
    assert table.column("_source_offset").to_pylist() == list(range(10))
    assert [(o.partition, o.first, o.last) for o in batch.offsets] == [(0, 0, 9)]
    assert batch.min_event_time == "2024-01-01T00:00:00+00:00"
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
    assert (rows["e2"]["y"], rows["e2"]["ts"]) == (1, datetime(2015, 1, 1, tzinfo=UTC))
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
        (json.dumps(event(1, event_time="soon")).encode(), "bad_event_time", "event_time"),
        (json.dumps(event(1, event_time="2024-02-30")).encode(), "bad_event_time", "event_time"),
        (json.dumps(event(1, event_time=True)).encode(), "bad_event_time", "event_time"),
        (json.dumps(event(1, event_time=10**17)).encode(), "bad_event_time", "event_time"),
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
    if reason == "bad_event_time":  # the error quotes what was sent
        assert repr(json.loads(value)["event_time"])[:10] in letter.error


@pytest.mark.parametrize(
    ("features", "accepted"),
    [
        ({"n": 2**63}, None),  # JSON integers have no size limit; int64 columns do
        ({"n": -(2**63) - 1}, None),
        ({"n": 9.3e18}, None),  # integral, but too wide once made an int
        ({"n": 2**63 - 1}, {"n": 2**63 - 1}),
        ({"x": 2**70}, {"x": float(2**70)}),  # a float feature takes it as a float
        ({"x": 10**400}, None),  # not even a float
    ],
)
def test_integers_wider_than_64_bits_are_rejected_or_widened(
    store: ArtifactStore, features: dict[str, Any], accepted: dict[str, Any] | None
) -> None:
    ing, _ = make(store)
    value = json.dumps(event(1, features=features)).encode()
    letters = ing.process([Msg(value, 0)])
    if accepted is None:
        (letter,) = letters
        assert letter.error.startswith("wrong_type:")
        assert letter.field == f"features.{next(iter(features))}"
        assert ing.flush() == []
    else:
        assert letters == []
        (batch,) = ing.flush()
        row = store.get_parquet(batch.uri).to_pylist()[0]
        assert {k: row[k] for k in accepted} == accepted


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
    assert metrics.dedup_ids.labels("toy")._value.get() == 3


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


def test_an_oversized_event_is_dead_lettered_with_a_prefix_size_and_hash(
    store: ArtifactStore,
) -> None:
    ing, metrics = make(store, max_event_bytes=2048)
    huge = json.dumps(event(1, features={"c": "z" * 100_000})).encode()
    letters = ing.process([Msg(huge, 0), *msgs([event(2)], start=1)])
    (letter,) = letters
    assert letter.error.startswith("too_large:")
    assert str(len(huge)) in letter.error
    assert letter.payload_truncated
    assert letter.payload_bytes == len(huge)
    assert letter.payload_sha256 == hashlib.sha256(huge).hexdigest()
    assert letter.payload == huge[:DLQ_PREFIX_BYTES].decode()
    assert metrics.dlq.labels("_unknown", "too_large")._value.get() == 1
    (batch,) = ing.flush()
    assert batch.rows == 1


# --- fuzzing: whatever arrives, each message is accepted, a duplicate, or dead-lettered ---

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_FEATURE_VALUES = st.one_of(
    _JSON,
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(["1", "2", "a", "", "\u00e9\u20ac\U0001f600", "\x00"]),
)


@st.composite
def _mutated_event(draw: st.DrawFn) -> bytes:
    """A valid event with one to three parts replaced by anything JSON can hold."""
    e = event(draw(st.integers(0, 50)))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["features", "top", "drop", "drop_feature"]))
        if where == "features" and isinstance(e.get("features"), dict):
            e["features"][draw(st.sampled_from([*e["features"], "extra"]))] = draw(_FEATURE_VALUES)
        elif where == "top":
            e[draw(st.sampled_from(["dataset", "event_id", "event_time", "label", "features"]))] = (
                draw(_JSON)
            )
        elif where == "drop":
            e.pop(draw(st.sampled_from(sorted(e))), None)
        elif isinstance(e.get("features"), dict) and e["features"]:
            e["features"].pop(draw(st.sampled_from(sorted(e["features"]))))
    return json.dumps(e, allow_nan=True).encode()


_MESSAGES = st.lists(
    st.one_of(
        _mutated_event(),
        st.binary(max_size=200),
        _JSON.map(lambda v: json.dumps(v, allow_nan=True).encode()),
        st.just(json.dumps(event(7)).encode()),
        st.integers(0, 5000).map(lambda n: json.dumps(event(8, event_id="x" * n)).encode()),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=_MESSAGES)
def test_fuzzed_events_never_crash_and_every_one_is_accounted_for(
    tmp_path_factory: pytest.TempPathFactory, values: list[bytes]
) -> None:
    store = ArtifactStore(f"file://{tmp_path_factory.mktemp('fuzz')}/store")
    ing, metrics = make(store, max_event_bytes=4096)
    letters = ing.process([Msg(v, i) for i, v in enumerate(values)])
    batches = ing.flush()
    outcomes = {
        outcome: sum(count(metrics, ds, outcome) for ds in ("toy", "_unknown"))
        for outcome in ("accepted", "duplicate", "rejected")
    }
    # every message counted exactly once; every rejection a dead letter naming field and why
    assert sum(outcomes.values()) == len(values)
    assert outcomes["rejected"] == len(letters)
    assert sum(b.rows for b in batches) == outcomes["accepted"]
    assert len({letter.offset for letter in letters}) == len(letters)
    for letter in letters:
        assert letter.field
        assert ": " in letter.error
        original = values[letter.offset]
        kept = original[:DLQ_PREFIX_BYTES] if letter.payload_truncated else original
        decoded = (
            base64.b64decode(letter.payload)
            if letter.payload_encoding == "base64"
            else letter.payload.encode()
        )
        assert decoded == kept
        assert letter.payload_truncated == (len(original) > 4096)
    # accepted rows hold the contract's types and labels (vocabularies are validation's)
    for batch in batches:
        table = store.get_parquet(batch.uri)
        assert set(table.column("y").to_pylist()) <= {0, 1}
        assert table.schema.field("x").type == pa.float64()
        assert None not in table.column("x").to_pylist()


def test_messages_never_borrow_bytes_from_their_neighbours(store: ArtifactStore) -> None:
    # Joined with commas into one array, these two broken halves would decode as two
    # valid events (the second with event_id "e,2"); each message must stand alone.
    second = json.dumps(event(2))
    cut = second.index('"e2"') + 2
    first_half = (json.dumps(event(1)) + "," + second[:cut]).encode()
    values = [first_half, second[cut:].encode()]
    ing, metrics = make(store)
    letters = ing.process([Msg(v, i) for i, v in enumerate(values)])
    assert sorted(letter.offset for letter in letters) == [0, 1]
    assert ing.flush() == []
    assert count(metrics, "toy", "accepted") == 0


def test_an_empty_message_is_dead_lettered(store: ArtifactStore) -> None:
    ing, _ = make(store)
    (letter,) = ing.process([Msg(b"", 0)])  # alone in its chunk: nothing to hide behind
    assert (letter.offset, letter.error.split(":")[0]) == (0, "bad_json")
