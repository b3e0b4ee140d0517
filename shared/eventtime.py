"""Event times: the one rule that turns a data event's ``event_time`` into a UTC timestamp.

Ingestion parses every event time with these rules and stores it as a timestamp column
(:data:`ARROW_TYPE`, microseconds, UTC) in the Parquet batches, so that training orders
rows by real time rather than by text (where ``"10000"`` sorts before ``"9999"``).

Accepted forms:

- an ISO-8601 string, as :meth:`datetime.datetime.fromisoformat` reads it: a date
  (``2018-01-01``, ``20180101``), a date and time with ``T`` or a space, optional
  seconds and fraction (digits past microseconds are dropped), an optional zone
  (``Z``, ``+02:00``). A time without a zone is taken as UTC;
- a four-digit year string (``"2016"``, ISO 8601's reduced precision): 1 January, UTC;
- a number: a whole number from 1000 to 9999 is a calendar year (the census data's
  ``year``; as epoch seconds it would fall in the first three hours of 1970); any
  other number is Unix epoch seconds when its magnitude is below :data:`MS_THRESHOLD`
  (10^11 seconds is the year 5138) and epoch milliseconds from there on (10^11 ms is
  March 1973, so millisecond times before then would be read as seconds);
- null or absent: the time of ingestion (the contract's ``event_time`` is optional).

Anything else is an :class:`EventTimeError`: booleans, NaN and infinities, strings that
are not ISO 8601 (epoch times must be JSON numbers, not strings), and times outside the
years 1 to 9999 once in UTC.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

ARROW_TYPE = pa.timestamp("us", tz="UTC")
"""Arrow type of the event-time column in batch tables."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
YEAR_MIN, YEAR_MAX = 1000, 9999
"""Whole numbers in this range are calendar years."""
MS_THRESHOLD = 10**11
"""Numbers of at least this magnitude are epoch milliseconds, smaller ones seconds."""

MIN_US = -62_135_596_800_000_000
"""0001-01-01T00:00:00Z in epoch microseconds: the earliest time Python can hold."""
MAX_US = 253_402_300_799_999_999
"""9999-12-31T23:59:59.999999Z in epoch microseconds: the latest."""

YEAR_TEXT = r"^(\d{4})$"
"""A four-digit year string (its year is group 1)."""
NAIVE_TEXT = r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}(?::\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?)?$"
"""ISO forms without a zone that Arrow's string-to-timestamp cast reads exactly as
:meth:`~datetime.datetime.fromisoformat` does (the Arrow ingestion path accepts only
these and leaves every other form to the Python rules)."""
ZONED_TEXT = (
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}(?::\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?(?:Z|[+-]\d{2}:\d{2})$"
)
"""The same for forms with a zone (Arrow reads them only into a zoned timestamp type)."""


class EventTimeError(ValueError):
    """An event time that none of the rules reads; the message says what was given."""


def _from_number(value: float) -> datetime:
    if YEAR_MIN <= value <= YEAR_MAX and value == int(value):
        return datetime(int(value), 1, 1, tzinfo=UTC)
    if abs(value) >= MS_THRESHOLD:
        return EPOCH + timedelta(milliseconds=value)
    return EPOCH + timedelta(seconds=value)


def parse(value: Any) -> datetime:
    """The UTC time of one non-null ``event_time`` value (see the module docstring).

    Raises:
        EventTimeError: for a value the rules do not read.
    """
    kind = type(value)
    try:
        if kind is str:
            if len(value) == 4 and value.isdigit():
                return datetime(int(value), 1, 1, tzinfo=UTC)
            if value.isdigit() and len(value) != 8:  # eight digits: a basic-format date
                raise EventTimeError(
                    f"{value!r:.40} is not an ISO-8601 time (send epoch times as numbers)"
                )
            at = datetime.fromisoformat(value)
            return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        if kind is int:
            return _from_number(value) if -(2**63) <= value < 2**63 else _out_of_range(value)
        if kind is float:
            if not math.isfinite(value):
                raise EventTimeError(f"{value!r} is not a time")
            return _from_number(value)
    except (ValueError, OverflowError) as err:
        if isinstance(err, EventTimeError):
            raise
        if kind is str:
            raise EventTimeError(f"{value!r:.40} is not an ISO-8601 time ({err})") from None
        _out_of_range(value)
    raise EventTimeError(
        f"expected an ISO-8601 string or epoch number, got {kind.__name__} {value!r:.40}"
    )


def _out_of_range(value: Any) -> datetime:
    raise EventTimeError(f"{value!r:.40} is outside the years 1 to 9999")


def parse_all(values: list[Any], default: datetime) -> tuple[list[datetime | None], list[int]]:
    """Every value parsed (null: ``default``) and the indices of those that fail
    (left None in the result)."""
    out: list[datetime | None] = []
    bad: list[int] = []
    append = out.append
    for i, v in enumerate(values):
        if v is None:
            append(default)
            continue
        try:
            append(parse(v))
        except EventTimeError:
            append(None)
            bad.append(i)
    return out, bad


def to_timestamps(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """A stored event-time column as :data:`ARROW_TYPE`.

    Timestamp columns are cast; text columns (batches written before ingestion parsed
    times, when numbers were kept as their text) are parsed by the same rules, a text
    that reads as a number by the number rule.

    Raises:
        EventTimeError: for a text the rules do not read.
    """
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column], column.type)
    if pa.types.is_timestamp(column.type):
        if column.type.tz is None:
            return column.cast(pa.timestamp(column.type.unit, "UTC")).cast(ARROW_TYPE)
        return column.cast(ARROW_TYPE)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.to_pylist()
    else:
        values = [_legacy_text(v) for v in column.cast(pa.string()).to_pylist()]
    return pa.chunked_array(
        [pa.array([None if v is None else parse(v) for v in values], ARROW_TYPE)]
    )


def _legacy_text(text: str | None) -> Any:
    if text is None or (len(text) == 4 and text.isdigit()):
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text else number
