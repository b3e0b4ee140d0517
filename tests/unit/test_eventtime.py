"""The event-time rule: every accepted form to one UTC instant, everything else a clear error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.datasets import concat_batches
from shared.eventtime import ARROW_TYPE, EventTimeError, parse, parse_all, to_timestamps

JAN1_2016 = datetime(2016, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2016", JAN1_2016),
        ("2016-01-01", JAN1_2016),
        ("20160101", JAN1_2016),
        ("2016-01-01T00:00:00", JAN1_2016),
        ("2016-01-01 00:00", JAN1_2016),
        ("2016-01-01T00:00:00Z", JAN1_2016),
        ("2016-01-01T02:00:00+02:00", JAN1_2016),
        ("2015-12-31T19:00:00-05:00", JAN1_2016),
        ("2016-01-01T00:00:00.000000001", JAN1_2016),  # past microseconds: dropped
        (2016, JAN1_2016),
        (2016.0, JAN1_2016),
        (1_451_606_400, JAN1_2016),  # epoch seconds
        (1_451_606_400_000, JAN1_2016),  # epoch milliseconds
        (1_451_606_400.25, JAN1_2016 + timedelta(milliseconds=250)),
        (-86_400, datetime(1969, 12, 31, tzinfo=UTC)),
        (999, datetime(1970, 1, 1, 0, 16, 39, tzinfo=UTC)),  # below 1000: seconds
    ],
)
def test_each_accepted_form_is_one_utc_instant(value: Any, expected: datetime) -> None:
    assert parse(value) == expected
    assert parse(value).tzinfo == UTC


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "not an ISO-8601 time"),
        ("soon", "not an ISO-8601 time"),
        ("2016-02-30", "not an ISO-8601 time"),
        ("1451606400", "send epoch times as numbers"),
        ("0001-01-01T00:00:00+01:00", "out of range"),
        (True, "got bool"),
        ([2016], "got list"),
        (float("nan"), "is not a time"),
        (float("inf"), "is not a time"),
        (10**17, "outside the years 1 to 9999"),
        (2**70, "outside the years 1 to 9999"),
    ],
)
def test_anything_else_is_a_clear_error(value: Any, says: str) -> None:
    with pytest.raises(EventTimeError, match=says):
        parse(value)


_INSTANT = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
)


@given(at=_INSTANT, offset_minutes=st.integers(-23 * 60, 23 * 60), sep=st.sampled_from("T "))
def test_iso_text_with_or_without_a_zone_is_read_back_exactly(
    at: datetime, offset_minutes: int, sep: str
) -> None:
    utc = at.replace(tzinfo=UTC)
    assert parse(at.isoformat(sep)) == utc
    zone = timezone(timedelta(minutes=offset_minutes))
    assert parse(utc.astimezone(zone).isoformat(sep)) == utc
    assert parse(at.date().isoformat()) == datetime(at.year, at.month, at.day, tzinfo=UTC)


@given(at=_INSTANT)
def test_epoch_seconds_and_milliseconds_are_told_apart(at: datetime) -> None:
    utc = at.replace(tzinfo=UTC, microsecond=at.microsecond // 1000 * 1000)
    millis = (utc - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    seconds = millis // 1000
    if abs(millis) >= 10**11:  # before March 1973 milliseconds are read as seconds
        assert parse(millis) == utc
    # Whole numbers 1000-9999 are years; seconds past 10**11 (the year 5138) milliseconds.
    if not 1000 <= seconds <= 9999 and abs(seconds) < 10**11:
        assert parse(seconds) == utc.replace(microsecond=0)


def test_nulls_take_the_default_and_failures_are_listed() -> None:
    times, bad = parse_all(["2016", None, "x", 2016], JAN1_2016 + timedelta(days=1))
    assert times == [JAN1_2016, JAN1_2016 + timedelta(days=1), None, JAN1_2016]
    assert bad == [2]


def test_stored_columns_become_timestamps_whatever_their_type() -> None:
    # Batches written before ingestion parsed times kept them as text ("2015" was the
    # number 2015); sorting that text puts "10000" before "9999".
    legacy = pa.chunked_array([pa.array(["2015", "9999", "10000", "2016-01-01", None])])
    got = to_timestamps(legacy).to_pylist()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert got == [
        datetime(2015, 1, 1, tzinfo=UTC),
        datetime(9999, 1, 1, tzinfo=UTC),
        epoch + timedelta(seconds=10000),
        JAN1_2016,
        None,
    ]
    naive = pa.chunked_array([pa.array([datetime(2016, 1, 1)], pa.timestamp("ns"))])
    assert to_timestamps(naive).type == ARROW_TYPE
    assert to_timestamps(naive).to_pylist() == [JAN1_2016]
    assert to_timestamps(pa.chunked_array([pa.array([2016, 1_451_606_400])])).to_pylist() == [
        JAN1_2016,
        JAN1_2016,
    ]
    with pytest.raises(EventTimeError):
        to_timestamps(pa.chunked_array([pa.array(["later"])]))


def test_a_dataset_mixing_text_and_timestamp_batches_loads_as_timestamps() -> None:
    old = pa.table({"id": ["1"], "ts": ["2015"]})  # a batch from before times were parsed
    new = pa.table({"id": ["2"], "ts": pa.array([JAN1_2016], ARROW_TYPE)})
    table = concat_batches([old, new])
    assert table.schema.field("ts").type == ARROW_TYPE
    assert table.column("ts").to_pylist() == [datetime(2015, 1, 1, tzinfo=UTC), JAN1_2016]
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):  # no timestamps: not ours
        concat_batches([pa.table({"a": [1]}), pa.table({"a": ["x"]})])
