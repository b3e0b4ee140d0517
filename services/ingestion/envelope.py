"""The envelope check: parsed data events of one dataset -> an Arrow table + rejections.

Column-wise, so the cost per event is a few C-level passes rather than Python code per
field: each column is pulled out with one list comprehension, its element types are
collected with ``set(map(type, values))``, and only a column whose types are not all
allowed is scanned element by element to name the offending rows. Ranges and category
vocabularies are validation's job (row rules); ingestion checks presence and types,
and reads event times into UTC timestamps (:mod:`shared.eventtime`; the one rule the
three decoders share).

Lenient forms are normalised here: integer ids become strings, integral floats for an
int feature become ints, 0/1 for a bool become false/true, numbers for a category become
its text (``1``, ``1.0`` and ``"1"`` are the category ``"1"``), and an absent nullable
feature is null.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from shared import eventtime
from shared.contract import Contract, Feature

SOURCE_TOPIC = "_source_topic"
SOURCE_PARTITION = "_source_partition"
SOURCE_OFFSET = "_source_offset"
INGESTED_AT = "_ingested_at"


class _Missing:
    """Marks a key that is absent from an event (distinct from an explicit null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
_NONE = type(None)
_MISSING_T = type(MISSING)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one event was refused."""

    reason: str
    """Short metric label: missing_feature, wrong_type, missing_label, unknown_label, ..."""
    field: str
    error: str


def event_time_column(contract: Contract) -> str:
    """Name of the event-time column in batch tables."""
    return contract.event_time or "event_time"


def batch_schema(contract: Contract) -> pa.Schema:
    """The Arrow schema of ingestion's batch tables for ``contract``."""
    fields = [
        pa.field(contract.id, pa.string(), nullable=False),
        pa.field(event_time_column(contract), eventtime.ARROW_TYPE, nullable=False),
    ]
    fields += [pa.field(f.name, feature_type(f), nullable=f.nullable) for f in contract.features]
    fields.append(pa.field(contract.label.name, label_type(contract), nullable=False))
    fields += [
        pa.field(SOURCE_TOPIC, pa.string(), nullable=False),
        pa.field(SOURCE_PARTITION, pa.int32(), nullable=False),
        pa.field(SOURCE_OFFSET, pa.int64(), nullable=False),
    ]
    return pa.schema(fields)


def feature_type(f: Feature) -> pa.DataType:
    """Arrow type of a feature column in batch tables."""
    return {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}.get(f.type, pa.string())


def label_type(contract: Contract) -> pa.DataType:
    """Arrow type of the label column."""
    classes = contract.label.classes
    if classes is not None:
        return pa.string() if any(isinstance(c, str) for c in classes) else pa.int64()
    return pa.int64() if contract.label.type == "int" else pa.float64()


# Allowed Python types per contract type, and how a value of an accepted type is normalised.
_ALLOWED: dict[str, frozenset[type]] = {
    "float": frozenset({float, int}),
    "int": frozenset({int, float}),
    "bool": frozenset({bool, int}),
    "category": frozenset({str, int, float}),
}


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Range of the Arrow ``int64`` columns that int features and labels are stored in."""


def _norm_int(v: Any) -> Any:
    return int(v) if type(v) is float else v


def _norm_category(v: Any) -> Any:
    if type(v) is str or v is None:
        return v
    if type(v) is float and v.is_integer():
        return str(int(v))
    return str(v)


def _norm_bool(v: Any) -> Any:
    return bool(v) if type(v) is int else v


def _value_ok(kind: str, v: Any) -> bool:
    """Element-level check, used only on columns that failed the fast type test."""
    t = type(v)
    if t not in _ALLOWED[kind]:
        return False
    if kind == "int" and t is float:
        return bool(v.is_integer())
    if kind == "bool" and t is int:
        return v in (0, 1)
    return True


class EnvelopeChecker:
    """Checks the events of one dataset against its contract and builds the batch columns.

    Args:
        contract: the dataset's contract.
    """

    def __init__(self, contract: Contract):
        self.contract = contract
        self.schema = batch_schema(contract)
        classes = contract.label.classes
        self._classes: frozenset[Any] | None = frozenset(classes) if classes else None
        self._label_type = label_type(contract)

    def check(
        self,
        events: Sequence[dict[str, Any]],
        ingested_at: datetime,
    ) -> tuple[dict[str, list[Any]], list[Rejection | None]]:
        """Validate ``events`` (parsed JSON objects whose ``dataset`` is this contract).

        Event times are parsed by :mod:`shared.eventtime` (a null or absent one is
        ``ingested_at``); a nullable feature that is absent is null.

        Returns the normalised columns for *all* rows (feature/label/id/time name -> values)
        and one entry per event: None when accepted, else its :class:`Rejection`. Only the
        accepted rows' values are guaranteed to be of the right type.
        """
        n = len(events)
        errors: list[Rejection | None] = [None] * n
        columns: dict[str, list[Any]] = {}

        ids = [e.get("event_id", MISSING) for e in events]
        if not set(map(type, ids)) <= {str} or "" in ids:
            for i, v in enumerate(ids):
                if type(v) is int:
                    ids[i] = str(v)
                elif type(v) is not str or not v:
                    what = "missing" if v is MISSING else f"{type(v).__name__} {v!r:.40}"
                    _reject(
                        errors,
                        i,
                        "bad_envelope",
                        "event_id",
                        f"event_id must be a non-empty string or an integer, got {what}",
                    )
        columns[self.contract.id] = ids

        times, bad = eventtime.parse_all([e.get("event_time") for e in events], ingested_at)
        for i in bad:
            try:
                eventtime.parse(events[i].get("event_time"))
            except eventtime.EventTimeError as err:
                _reject(errors, i, "bad_event_time", "event_time", str(err))
        columns[event_time_column(self.contract)] = times

        feats = [e.get("features") for e in events]
        if not set(map(type, feats)) <= {dict}:
            for i, v in enumerate(feats):
                if type(v) is not dict:
                    _reject(errors, i, "bad_envelope", "features", "features must be a JSON object")
                    feats[i] = {}
        for f in self.contract.features:
            columns[f.name] = self._feature(f, feats, errors)

        columns[self.contract.label.name] = self._label(
            [e.get("label", MISSING) for e in events], errors
        )
        return columns, errors

    def _feature(self, f: Feature, feats: list[Any], errors: list[Rejection | None]) -> list[Any]:
        name = f.name
        values = [d.get(name, MISSING) for d in feats]
        allowed = _ALLOWED[f.type] | ({_NONE} if f.nullable else set())
        types = set(map(type, values))
        # An int feature given floats needs each one checked for a fractional part, a
        # bool given integers each one checked for being 0 or 1.
        if (
            not types <= allowed
            or (f.type == "int" and float in types)
            or (f.type == "bool" and int in types)
        ):
            for i, v in enumerate(values):
                if v is MISSING:
                    values[i] = None
                    if not f.nullable:  # an absent nullable feature is a null (as in msgspec)
                        _reject(
                            errors, i, "missing_feature", f"features.{name}", "feature is missing"
                        )
                elif v is None:
                    if not f.nullable:
                        _reject(errors, i, "null_feature", f"features.{name}", "feature is null")
                elif not _value_ok(f.type, v):
                    _reject(
                        errors,
                        i,
                        "wrong_type",
                        f"features.{name}",
                        f"expected {f.type}, got {type(v).__name__} {v!r:.40}",
                    )
                    values[i] = None
        norm: Callable[[Any], Any] | None = None
        if f.type == "category" and types - {str, _NONE}:
            norm = _norm_category
        elif f.type == "int" and float in types:
            norm = _norm_int
        elif f.type == "bool" and int in types:
            norm = _norm_bool
        if norm is not None:
            values = list(map(norm, values))
        if f.type in ("int", "float") and int in set(map(type, values)):
            self._fit_int64(values, errors, f"features.{name}", as_float=f.type == "float")
        return values

    @staticmethod
    def _fit_int64(
        values: list[Any], errors: list[Rejection | None], field: str, *, as_float: bool
    ) -> None:
        """Reject integers an Arrow column cannot hold (JSON integers have no size limit).

        For a float column an integer beyond 2**53 (which Arrow refuses to round into a
        double) becomes a float, as the msgspec and Arrow readers make it, unless even
        that overflows.
        """
        low, high = (-(2**53), 2**53) if as_float else (INT64_MIN, INT64_MAX)
        ints = [v for v in values if type(v) is int]
        if min(ints) >= low and max(ints) <= high:
            return
        for i, v in enumerate(values):
            if type(v) is not int or low <= v <= high:
                continue
            if as_float and abs(v) < 2**1023:
                values[i] = float(v)
            else:
                _reject(errors, i, "wrong_type", field, "integer outside the 64-bit range")
                values[i] = None

    def _label(self, values: list[Any], errors: list[Rejection | None]) -> list[Any]:
        types = set(map(type, values))
        classes = self._classes
        if classes is not None:
            try:
                ok = set(values) <= classes and not types & {bool}
            except TypeError:  # an unhashable label (list, object)
                ok = False
            if not ok:
                for i, v in enumerate(values):
                    if v is MISSING or v is None:
                        _reject(errors, i, "missing_label", "label", "label is missing")
                        values[i] = None
                    elif type(v) is bool or type(v) not in (int, float, str) or v not in classes:
                        shown = sorted(map(str, classes))
                        _reject(
                            errors, i, "unknown_label", "label", f"{v!r:.40} is not one of {shown}"
                        )
                        values[i] = None
            if self._label_type == pa.int64() and float in types:
                values = list(map(_norm_int, values))
            return values
        if not types <= {int, float}:
            for i, v in enumerate(values):
                if v is MISSING or v is None:
                    _reject(errors, i, "missing_label", "label", "label is missing")
                    values[i] = None
                elif type(v) not in (int, float):
                    _reject(errors, i, "wrong_type", "label", f"expected a number, got {v!r:.40}")
                    values[i] = None
        if self._label_type == pa.int64() and float in set(map(type, values)):
            for i, v in enumerate(values):
                if type(v) is float:
                    if v.is_integer():
                        values[i] = int(v)
                    else:
                        _reject(errors, i, "wrong_type", "label", f"expected an integer, got {v!r}")
                        values[i] = None
        if int in set(map(type, values)):
            as_float = self._label_type != pa.int64()
            self._fit_int64(values, errors, "label", as_float=as_float)
        return values


def _reject(errors: list[Rejection | None], i: int, reason: str, field: str, error: str) -> None:
    if errors[i] is None:  # the first problem found names the event's rejection
        errors[i] = Rejection(reason, field, error)


def take(values: list[Any], keep: list[int]) -> list[Any]:
    """``values`` at the indices ``keep`` (C-level gather)."""
    if len(keep) == len(values):
        return values
    if not keep:
        return []
    if len(keep) == 1:
        return [values[keep[0]]]
    return list(operator.itemgetter(*keep)(values))


def json_lines(values: Sequence[bytes | None]) -> bytes | None:
    """The chunk ``values`` as JSON lines, when line i is exactly message i: every
    message present and free of newlines of its own (so no message can borrow bytes from
    its neighbour). None otherwise; the decoders then take the messages one by one.
    """
    if not values or None in values:
        return None
    joined = b"\n".join(values)  # type: ignore[arg-type]
    return joined if joined.count(b"\n") == len(values) - 1 else None


def build_table(
    schema: pa.Schema,
    columns: Mapping[str, list[Any] | pa.ChunkedArray],
    topic: str,
    partitions: list[int],
    offsets: list[int],
) -> pa.Table:
    """The batch table from accepted rows' normalised columns (Python lists, or Arrow
    columns of the schema's types) and their source positions."""
    n = len(offsets)
    arrays: list[pa.ChunkedArray] = []
    for field in schema:
        if field.name == SOURCE_TOPIC:
            arrays.append(pa.chunked_array([pa.array([topic] * n, pa.string())]))
        elif field.name == SOURCE_PARTITION:
            arrays.append(pa.chunked_array([pa.array(partitions, pa.int32())]))
        elif field.name == SOURCE_OFFSET:
            arrays.append(pa.chunked_array([pa.array(offsets, pa.int64())]))
        else:
            values = columns[field.name]
            if not isinstance(values, pa.ChunkedArray):
                values = pa.chunked_array([pa.array(values, field.type)])
            arrays.append(values)
    return pa.Table.from_arrays(arrays, schema=schema)
