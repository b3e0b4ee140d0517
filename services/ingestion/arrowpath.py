"""The Arrow path: a clean chunk of one dataset's events parsed in C++ straight to columns.

pyarrow's JSON reader, given the contract as an explicit schema, parses and types a
whole chunk of JSON lines in one call (multi-threaded, without the GIL) at about four
times the rate of the msgspec fast path (:mod:`services.ingestion.fastpath`), and leaves
the values in Arrow columns, so nothing is converted back and forth through Python
objects. It is used only when its result is provably the one the strict msgspec path
would give; for anything else :meth:`ArrowDecoder.decode` returns ``None`` and the chunk
takes the msgspec path, which sorts events out one by one and names what is wrong.

What makes a chunk clean, and why each check is needed:

- every message is one line that starts with ``{``: the reader is fed the messages
  joined by newlines, so each message then yields at least one row, and a row count
  equal to the message count means exactly one row per message (an empty message
  yields none and a message of two objects yields two, which would cancel out);
- the reader accepts the chunk under the explicit schema: it refuses a string where a
  number is expected, a fraction or an exponent in an int column, a number in a string
  column (so integer ids or categories take the msgspec path, which stringifies them),
  a boolean for a number, an integer outside int64, duplicate keys, a line that is not
  an object and bad escapes;
- the chunk is valid UTF-8: the reader copies the bytes of strings without checking;
- every ``dataset`` is the contract's name; ids, the label, the ``features`` object and
  every non-nullable feature are present and not null (the reader turns a missing key
  into a null, like an explicit null); ids are not empty; labels are among the classes;
- every float is finite: the reader also takes ``NaN``, ``Inf`` and ``Infinity``
  literals, which are not JSON (Python's ``json`` takes some of them and not others).
- every event time is read exactly as :func:`shared.eventtime.parse` reads it: the
  strings all match one of the forms on which Arrow's cast and Python's
  ``fromisoformat`` agree (:data:`~shared.eventtime.NAIVE_TEXT`, four-digit years
  included, or :data:`~shared.eventtime.ZONED_TEXT`), or the numbers are all integers
  (years, epoch seconds and milliseconds told apart by the same thresholds), and the
  results lie within the years 1 to 9999. A chunk mixing zoned and unzoned strings,
  or holding any other form, takes the msgspec path.

Unknown fields are ignored, as by the msgspec structs.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import datetime

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from shared import eventtime
from shared.contract import Contract

from .envelope import event_time_column, feature_type, label_type

_TIME_TYPES: dict[type, pa.DataType] = {str: pa.string(), int: pa.int64(), type(None): pa.string()}
"""Arrow type of ``event_time`` by the JSON type of the chunk's first one. Floats are
left to the msgspec path (fractions of a second are rounded by Python's ``timedelta``)."""


class _Head(msgspec.Struct):
    """The two fields read from a chunk's first message to choose the schema."""

    dataset: str
    event_time: str | int | float | None = None


_HEAD = msgspec.json.Decoder(_Head)
_READ = pajson.ReadOptions(use_threads=True, block_size=1 << 20)


class ArrowDecoder:
    """Parses clean chunks of one dataset's data events into batch columns.

    Args:
        contracts: contract name -> contract.
    """

    def __init__(self, contracts: Mapping[str, Contract]):
        self.contracts = dict(contracts)
        self._options: dict[tuple[str, type], pajson.ParseOptions] = {}

    def _parse_options(self, contract: Contract, time_type: type) -> pajson.ParseOptions:
        key = (contract.name, time_type)
        options = self._options.get(key)
        if options is None:
            features = pa.struct([pa.field(f.name, feature_type(f)) for f in contract.features])
            schema = pa.schema(
                [
                    ("dataset", pa.string()),
                    ("event_id", pa.string()),
                    ("event_time", _TIME_TYPES[time_type]),
                    ("features", features),
                    ("label", label_type(contract)),
                ]
            )
            options = pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            )
            self._options[key] = options
        return options

    def decode(
        self, values: Sequence[bytes], lines: bytes, ingested_at: datetime
    ) -> tuple[str, dict[str, pa.ChunkedArray]] | None:
        """The dataset and its batch columns (id, event time, features, label; source
        columns excluded) for a clean chunk of ``values``, else None.

        ``lines`` is the chunk as JSON lines (:func:`~services.ingestion.envelope.json_lines`),
        one line per message.
        """
        n = len(values)
        # Each line starts with "{" (see the module docstring).
        if {v[:1] for v in values} != {b"{"} or not _utf8(lines):
            return None
        try:
            head = _HEAD.decode(values[0])
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        contract = self.contracts.get(head.dataset)
        if contract is None or type(head.event_time) not in _TIME_TYPES:
            return None
        options = self._parse_options(contract, type(head.event_time))
        try:
            table = pajson.read_json(io.BytesIO(lines), read_options=_READ, parse_options=options)
        except (pa.ArrowException, ValueError):  # ArrowInvalid; UnicodeDecodeError on bad bytes
            return None
        if table.num_rows != n:
            return None
        return self._columns(contract, table, ingested_at)

    def _columns(
        self, contract: Contract, table: pa.Table, ingested_at: datetime
    ) -> tuple[str, dict[str, pa.ChunkedArray]] | None:
        dataset = table.column("dataset")
        ids = table.column("event_id")
        feats = table.column("features")
        label = table.column("label")
        if dataset.null_count or ids.null_count or feats.null_count or label.null_count:
            return None
        if not pc.all(pc.equal(dataset, contract.name)).as_py():
            return None
        if pc.min(pc.binary_length(ids)).as_py() == 0:
            return None
        classes = contract.label.classes
        if classes is not None:
            # Only the classes of the column's type: with classes [1, "a"] (a string
            # column) a label "1" is not class 1, as in the msgspec path's Literal.
            text = label.type == pa.string()
            allowed = pa.array([c for c in classes if isinstance(c, str) == text], label.type)
            if not pc.all(pc.is_in(label, allowed)).as_py():
                return None
        flat = table.select(["features"]).flatten()
        columns: dict[str, pa.ChunkedArray] = {contract.id: ids}
        times = _event_times(table.column("event_time"))
        if times is None:
            return None
        columns[event_time_column(contract)] = times.fill_null(
            pa.scalar(ingested_at, eventtime.ARROW_TYPE)
        )
        for f in contract.features:
            values = flat.column(f"features.{f.name}")
            if values.null_count and not f.nullable:
                return None
            if f.type == "float" and not _finite(values):
                return None
            columns[f.name] = values
        if label.type == pa.float64() and not _finite(label):
            return None
        columns[contract.label.name] = label
        return contract.name, columns


def _utf8(data: bytes) -> bool:
    """``data`` is valid UTF-8 (the reader copies string bytes without checking them)."""
    if data.isascii():  # the common case, ten times cheaper than decoding
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _finite(values: pa.ChunkedArray) -> bool:
    """No NaN or infinity among ``values`` (nulls allowed)."""
    return values.null_count == len(values) or bool(pc.all(pc.is_finite(values)).as_py())


def _event_times(times: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """The event-time column as :data:`shared.eventtime.ARROW_TYPE` (nulls kept), or
    None when some value is not provably read as :func:`shared.eventtime.parse` reads it."""
    try:
        stamps = _text_times(times) if times.type == pa.string() else _number_times(times)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # an overflow, a bad date
        return None
    if stamps is None or stamps.null_count == len(stamps):
        return stamps
    bounds = pc.min_max(stamps.cast(pa.int64()))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low < eventtime.MIN_US or high > eventtime.MAX_US:
        return None
    return stamps


def _text_times(times: pa.ChunkedArray) -> pa.ChunkedArray | None:
    if times.null_count == len(times):
        return times.cast(eventtime.ARROW_TYPE)
    text = times
    if pc.any(pc.equal(pc.binary_length(times), 4)).as_py():  # the regex only when needed
        text = pc.replace_substring_regex(times, eventtime.YEAR_TEXT, r"\1-01-01")
    if pc.all(pc.match_substring_regex(text, eventtime.NAIVE_TEXT)).as_py():
        # Without a zone: UTC (a zone-less cast keeps the clock reading as UTC).
        return text.cast(pa.timestamp("us")).cast(eventtime.ARROW_TYPE)
    if pc.all(pc.match_substring_regex(text, eventtime.ZONED_TEXT)).as_py():
        return text.cast(eventtime.ARROW_TYPE)
    return None


def _number_times(times: pa.ChunkedArray) -> pa.ChunkedArray:
    """Integers by the number rule: years, epoch seconds or epoch milliseconds."""
    years = pc.and_(
        pc.greater_equal(times, eventtime.YEAR_MIN), pc.less_equal(times, eventtime.YEAR_MAX)
    )
    millis = pc.greater_equal(pc.abs_checked(times), eventtime.MS_THRESHOLD)
    micros = pc.if_else(
        millis,
        pc.multiply_checked(pc.if_else(millis, times, 0), 1000),
        pc.multiply_checked(pc.if_else(millis, 0, times), 1_000_000),
    )
    if pc.any(years).as_py():
        micros = pc.if_else(years, _jan1_micros(pc.if_else(years, times, 1970)), micros)
    return micros.cast(pa.timestamp("us")).cast(eventtime.ARROW_TYPE)


_LEAP_DAYS_1970 = 1969 // 4 - 1969 // 100 + 1969 // 400
_DAY_US = 86_400_000_000


def _jan1_micros(years: pa.ChunkedArray) -> pa.ChunkedArray:
    """1 January of each year (1000 to 9999) in epoch microseconds, by integer arithmetic
    (a string round trip through the timestamp parser costs several times more)."""
    before = pc.subtract(years, 1)  # positive, so Arrow's truncating division floors
    leap_days = pc.add(
        pc.subtract(pc.divide(before, 4), pc.divide(before, 100)), pc.divide(before, 400)
    )
    days = pc.add(
        pc.multiply(pc.subtract(years, 1970), 365), pc.subtract(leap_days, _LEAP_DAYS_1970)
    )
    return pc.multiply(days, _DAY_US)
