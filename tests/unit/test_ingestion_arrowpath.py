"""The Arrow path of ingestion must give exactly what the msgspec path gives, or step aside.

Each test runs the same messages through two ingestors, one with the Arrow path turned
off, and compares everything they produce: batch tables, dead letters and counters.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.ingestion.arrowpath import ArrowDecoder
from services.ingestion.core import Ingestor
from services.ingestion.envelope import json_lines
from services.ingestion.metrics import IngestionMetrics
from shared.contract import Contract, parse_contract
from shared.store import ArtifactStore

from .test_ingestion_core import CONTRACT, Msg, event

NOW = datetime(2026, 11, 30, tzinfo=UTC)
MIXED = parse_contract(
    {
        "name": "mixed",
        "task": "classification",
        "id": "id",
        "label": {"name": "y", "classes": [1, "a"]},
        "features": [{"name": "x", "type": "float"}],
    }
)


def _run(
    store_dir: Path, values: list[bytes], *, arrow: bool, contract: Contract = CONTRACT
) -> tuple[dict[str, pa.Table], list[tuple[int, str, str]], dict[tuple[str, ...], float], bool]:
    """Process ``values`` in one chunk: tables, (offset, field, error) of each dead
    letter, every counter, and whether the Arrow path took the chunk."""
    metrics = IngestionMetrics(CollectorRegistry())
    ing = Ingestor(
        {contract.name: contract},
        ArtifactStore(f"file://{store_dir}"),
        metrics,
        batch_rows=1000,
        batch_seconds=60.0,
        dedup_window=100,
    )
    decode = ing._arrow.decode
    used: list[bool] = []

    def spy(chunk: Any, lines: bytes, now: datetime) -> Any:
        result = decode(chunk, lines, now) if arrow else None
        used.append(result is not None)
        return result

    ing._arrow.decode = spy  # type: ignore[method-assign]
    with mock.patch("services.ingestion.core.utcnow") as utcnow:
        utcnow.return_value = NOW
        letters = ing.process([Msg(v, i) for i, v in enumerate(values)])
    counters = {
        tuple(s.labels.values()): s.value
        for family in (metrics.events, metrics.dlq)
        for metric in family.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }
    return (
        ing.detach(),
        [(d.offset, d.field, d.error) for d in letters],
        counters,
        any(used),
    )


def _same(tmp: Path, values: list[bytes], contract: Contract = CONTRACT) -> bool:
    """Assert both paths agree on ``values``; True when the Arrow path took them."""
    fast = _run(tmp / "a", values, arrow=True, contract=contract)
    slow = _run(tmp / "b", values, arrow=False, contract=contract)
    assert fast[0].keys() == slow[0].keys()
    for name, table in fast[0].items():
        assert table.schema == slow[0][name].schema
        # repr, because NaN (which both paths keep) is unequal to itself
        assert repr(table.to_pylist()) == repr(slow[0][name].to_pylist())
    assert fast[1:3] == slow[1:3]
    return fast[3]


def _dumps(e: dict[str, Any]) -> bytes:
    return json.dumps(e, separators=(",", ":")).encode()


def test_a_clean_chunk_takes_the_arrow_path_and_gives_the_same_batch(tmp_path: Path) -> None:
    values = [_dumps(event(i)) for i in range(50)]
    values += [_dumps(event(60, event_time=None)), _dumps(event(61, features={"x": 2}))]
    assert _same(tmp_path, values)


def test_integer_event_times_take_the_arrow_path(tmp_path: Path) -> None:
    # The census events carry their year as a number.
    values = [_dumps(event(i, event_time=2015 + i % 3)) for i in range(20)]
    assert _same(tmp_path, values)


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("empty message hidden by a double one", [b"", _dumps(event(1)) + _dumps(event(2))]),
        ("a message spread over lines", [json.dumps(event(1), indent=1).encode()]),
        ("NaN literal", [_dumps(event(1)).replace(b'"x":1.5', b'"x":NaN')]),
        (
            "Inf literal (not even Python's json takes it)",
            [_dumps(event(1)).replace(b"1.5", b"Inf")],
        ),
        ("Infinity literal", [_dumps(event(1)).replace(b'"x":1.5', b'"x":-Infinity')]),
        ("integer id", [_dumps(event(1, event_id=7))]),
        ("empty id", [_dumps(event(1, event_id=""))]),
        ("integer category", [_dumps(event(1, features={"c": 2}))]),
        ("float event time", [_dumps(event(1, event_time=2015.5))]),
        ("float for an int", [_dumps(event(1, features={"n": 3.0}))]),
        ("null non-nullable feature", [_dumps(event(1, features={"x": None}))]),
        ("unknown label", [_dumps(event(1, label=2))]),
        ("duplicate key", [_dumps(event(1)).replace(b'"label":1', b'"label":1,"label":0')]),
        ("another dataset", [_dumps(event(1, dataset="other"))]),
        ("invalid UTF-8", [_dumps(event(1, features={"c": "a"})).replace(b'"a"', b'"\xff"')]),
    ],
)
def test_anything_not_provably_clean_steps_aside(
    tmp_path: Path, name: str, values: list[bytes]
) -> None:
    chunk = [_dumps(event(i)) for i in range(10, 14)] + values
    assert not _same(tmp_path, chunk), name


def test_a_string_label_is_not_taken_for_an_integer_class(tmp_path: Path) -> None:
    ok = {"dataset": "mixed", "event_id": "1", "features": {"x": 1.0}, "label": "a"}
    assert _same(tmp_path / "ok", [_dumps(ok)], MIXED)
    # "1" is not the class 1: the msgspec path refuses it, so the Arrow path must too.
    assert not _same(tmp_path / "bad", [_dumps(ok), _dumps({**ok, "label": "1"})], MIXED)


def test_the_decoder_refuses_a_chunk_it_cannot_prove(tmp_path: Path) -> None:
    decoder = ArrowDecoder({"toy": CONTRACT})
    assert json_lines([]) is None
    assert json_lines([None]) is None
    assert json_lines([b'{"a":\n1}', b"{}"]) is None  # a message of its own lines
    values = [_dumps(event(1))]
    lines = json_lines(values)
    assert lines is not None
    assert decoder.decode(values, lines, NOW) is not None


_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**66), max_value=2**66),
)
_VARIANTS: dict[str, st.SearchStrategy[Any]] = {
    "x": _NUMBERS | st.none() | st.just("1.5"),
    "n": _NUMBERS | st.booleans(),
    "c": st.sampled_from(["1", "2", "a", "", "\u00e9", 1, 2.0, None]),
    "b": st.sampled_from([True, False, 0, 1, None, "true"]),
    "opt": _NUMBERS | st.none(),
    "event_id": st.sampled_from(["e", "", 5, None, "\u00e9"]),
    "event_time": st.sampled_from(["2024-01-01", 2015, 2015.5, None, "", True]),
    "label": st.sampled_from([0, 1, 2, 1.0, "1", None, True]),
}


@st.composite
def _lenient_event(draw: st.DrawFn) -> bytes:
    """A valid event, often with one value swapped for a near miss or a lenient form."""
    e = event(draw(st.integers(0, 40)))
    for key in draw(st.lists(st.sampled_from(sorted(_VARIANTS)), max_size=2)):
        value = draw(_VARIANTS[key])
        if key in e["features"]:
            e["features"][key] = value
        else:
            e[key] = value
    if draw(st.booleans()) and draw(st.booleans()):
        e.pop(draw(st.sampled_from(["event_time", "label", "event_id"])), None)
    text = json.dumps(e, allow_nan=True, separators=(",", ":"))
    return text.encode()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(_lenient_event(), min_size=1, max_size=12))
def test_fuzzed_chunks_give_the_same_result_on_both_paths(
    tmp_path_factory: pytest.TempPathFactory, values: list[bytes]
) -> None:
    _same(tmp_path_factory.mktemp("arrow"), values)


_INSTANTS = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
)
_ZONES = st.sampled_from(["Z", "+00:00", "-00:00", "+02:00", "-05:30", "+14:00", "+23:59"])


@st.composite
def _event_time(draw: st.DrawFn) -> Any:
    """An event time in one of the accepted forms (or a near miss)."""
    at = draw(_INSTANTS)
    form = draw(st.sampled_from(["date", "naive", "zoned", "year", "int", "ms", "float", "odd"]))
    sep = draw(st.sampled_from(["T", " "]))
    digits = draw(st.sampled_from([0, 1, 3, 6, 9]))
    clock = at.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + (
        "." + f"{at.microsecond:06d}{draw(st.integers(0, 999)):03d}"[:digits] if digits else ""
    )
    if form == "date":
        return at.date().isoformat()
    if form == "naive":
        return clock if draw(st.booleans()) else clock[: draw(st.sampled_from([13, 16]))]
    if form == "zoned":
        return clock + draw(_ZONES)
    if form == "year":
        year = at.year
        return f"{year:04d}" if draw(st.booleans()) else year
    seconds = int((at.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    if form == "int":
        return seconds
    if form == "ms":
        return seconds * 1000 + draw(st.integers(0, 999))
    if form == "float":
        return seconds + draw(st.floats(0, 1, exclude_max=True))
    near_misses = ["", "2016-02-30", "2016-13-01", "1700000000", "2016-01-01T24:00:00"]
    near_misses += ["0000-01-01", "2016-01-01T10:20:30+24:00", "9999-12-31T23:00:00-02:00"]
    return draw(st.sampled_from([*near_misses, "soon", 10**17, True]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(times=st.lists(_event_time() | st.none(), min_size=1, max_size=8), same=st.booleans())
def test_event_times_in_every_form_give_the_same_batch_on_both_paths(
    tmp_path_factory: pytest.TempPathFactory, times: list[Any], same: bool
) -> None:
    if same:  # a chunk of one form, the case the Arrow path is built for
        times = [times[0]] * len(times)
    values = [_dumps(event(i, event_time=t)) for i, t in enumerate(times)]
    _same(tmp_path_factory.mktemp("times"), values)


@pytest.mark.parametrize(
    "times",
    [
        ["2016", "2017", "2018"],
        ["2018-01-01", "2018-01-01T00:08:43.152000", "2018-01-01 00:17"],
        ["2018-01-01T00:00:00Z", "2018-01-01T02:00:00+02:00", "2017-12-31T19:00:00.5-05:00"],
        [2015, 1_700_000_000, 1_700_000_000_123, -86_400, None],
    ],
)
def test_chunks_of_one_time_form_take_the_arrow_path(tmp_path: Path, times: list[Any]) -> None:
    values = [_dumps(event(i, event_time=t)) for i, t in enumerate(times)]
    assert _same(tmp_path, values)


def test_mixed_zoned_and_unzoned_times_step_aside_and_still_agree(tmp_path: Path) -> None:
    times = ["2018-01-01T00:00:00Z", "2018-01-01T00:00:00"]
    assert not _same(tmp_path, [_dumps(event(i, event_time=t)) for i, t in enumerate(times)])


def test_a_wide_integer_for_a_float_is_rounded_alike_on_every_path(tmp_path: Path) -> None:
    # 2**53 + 1 has no double: the slow path (taken here for the Infinity) crashed on it.
    wide = [_dumps(event(i, features={"opt": 2**53 + 1})) for i in range(3)]
    assert _same(tmp_path / "clean", wide)
    odd = [w.replace(b'"x":1.5', b'"x":Infinity') for w in wide]
    assert not _same(tmp_path / "odd", odd)
