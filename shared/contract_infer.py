"""A draft data contract from a data file, as TFDV's ``infer_schema`` drafts a schema.

:func:`infer_contract` profiles an Arrow table column by column: strings, booleans and
dictionary columns become ``category``/``bool`` features with their vocabulary,
integers ``int`` and other numbers ``float`` with a range widened by a margin, and any
column holding a null (or NaN) is ``nullable``. The label decides the task: strings,
booleans and numbers with few distinct integer values are classes (classification),
other numbers regression. The draft always validates (:func:`shared.contract.parse_contract`);
it is a start to review, not a verdict: integer codes that mean categories, groups for
fairness and the policies are the owner's to set. :func:`to_yaml` writes the draft with
a header comment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from shared.contract import Contract, check_name, parse_contract

MAX_CATEGORIES = 100
"""A text column with more distinct values than this is left out (an id, free text)."""
MAX_CLASSES = 20
"""A numeric label with at most this many distinct integer values is a class label."""
MARGIN = 0.1
"""Share of the observed span added below and above a numeric range."""
MIN_ROWS_CAP = 1000
"""The draft's ``training.min_rows``: this, or the file's row count when smaller."""


class InferenceError(ValueError):
    """The file cannot give a contract (missing column, no usable feature)."""


@dataclass
class Inferred:
    """A draft contract and what the profiling left out, with the reason."""

    contract: Contract
    data: dict[str, Any]
    """The draft as a plain mapping (what :func:`to_yaml` writes)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Column -> why it is not a feature."""
    notes: list[str] = field(default_factory=list)
    """What the owner must settle before the draft can be used (a missing id column)."""


def _plain(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        return col.cast(col.type.value_type)
    return col


def _non_null(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_floating(col.type):
        col = pc.if_else(pc.is_nan(col), None, col)
    return col.drop_null()


def _nullable(col: pa.ChunkedArray) -> bool:
    return len(_non_null(col)) < len(col)


def _number_text(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _sorted_values(values: Sequence[Any]) -> list[str]:
    """Distinct values as strings: numerically when every one is a number, else by text."""
    texts = {_as_text(v) for v in values}
    numbers = {t: _number_text(t) for t in texts}
    if all(n is not None for n in numbers.values()):
        return sorted(texts, key=lambda t: (numbers[t], t))
    return sorted(texts)


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _integral(col: pa.ChunkedArray) -> bool:
    if pa.types.is_integer(col.type):
        return True
    if not pa.types.is_floating(col.type) or len(col) == 0:
        return False
    return bool(pc.all(pc.equal(pc.floor(col), col)).as_py())


def _range(col: pa.ChunkedArray, integral: bool, margin: float) -> tuple[float, float] | None:
    """The observed range widened by ``margin``; None when no value is finite."""
    if pa.types.is_floating(col.type):
        col = col.filter(pc.is_finite(col))
    if len(col) == 0:
        return None
    lo, hi = (float(v) for v in pc.min_max(col).values())
    pad = (hi - lo) * margin or abs(hi) * margin or 1.0
    low, high = lo - pad, hi + pad
    if lo >= 0 and low < 0:
        low = 0.0  # a quantity never below zero in the data keeps zero as its floor
    if integral:
        return float(math.floor(low)), float(math.ceil(high))
    return _round_out(low, up=False), _round_out(high, up=True)


def _round_out(value: float, *, up: bool) -> float:
    """``value`` rounded away from the data to three significant digits (a readable bound)."""
    if value == 0:
        return 0.0
    digits = 2 - math.floor(math.log10(abs(value)))
    scaled = value * 10.0**digits
    return round((math.ceil(scaled) if up else math.floor(scaled)) / 10.0**digits, max(digits, 0))


def _feature(
    name: str, col: pa.ChunkedArray, margin: float, max_categories: int
) -> dict[str, Any] | str:
    """The feature mapping for one column, or the reason (a string) it is left out."""
    col = _plain(col)
    values = _non_null(col)
    spec: dict[str, Any] = {"name": name}
    if len(values) == 0:
        return "every value is null"
    kind = col.type
    if pa.types.is_boolean(kind):
        spec["type"] = "bool"
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        integral = pa.types.is_integer(kind)
        spec["type"] = "int" if integral else "float"
        bounds = _range(values, integral, margin)
        if bounds is None:
            return "no finite value"
        spec["min"], spec["max"] = bounds
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        distinct = pc.unique(values).to_pylist()
        if len(distinct) > max_categories:
            return f"{len(distinct)} distinct text values (more than {max_categories})"
        if len(distinct) == len(values) > 2:
            return "every value is different (an id or free text)"
        spec["type"] = "category"
        spec["values"] = _sorted_values(distinct)
    elif pa.types.is_temporal(kind):
        return f"a time ({kind}): pass --time {name!r} if it is the event time"
    else:
        return f"type {kind} is not a feature type (float, int, category, bool)"
    if _nullable(col):
        spec["nullable"] = True
    return spec


def _label(name: str, col: pa.ChunkedArray, max_classes: int) -> tuple[str, dict[str, Any]]:
    col = _plain(col)
    values = _non_null(col)
    if len(values) == 0:
        raise InferenceError(f"label {name!r}: every value is null")
    kind = col.type
    distinct = pc.unique(values).to_pylist()
    if pa.types.is_boolean(kind):
        return "classification", {"name": name, "classes": [0, 1]}
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if _integral(values) and 2 <= len(distinct) <= max_classes:
            return "classification", {"name": name, "classes": sorted(int(v) for v in distinct)}
        label_type = "int" if pa.types.is_integer(kind) else "float"
        return "regression", {"name": name, "type": label_type}
    if len(distinct) < 2:
        raise InferenceError(f"label {name!r}: one class only ({distinct})")
    if len(distinct) > max_classes:
        raise InferenceError(
            f"label {name!r}: {len(distinct)} distinct text values is too many classes "
            f"(at most {max_classes})"
        )
    return "classification", {"name": name, "classes": _sorted_values(distinct)}


def infer_contract(
    table: pa.Table,
    *,
    name: str,
    label: str,
    id: str | None = None,
    event_time: str | None = None,
    drop: Sequence[str] = (),
    margin: float = MARGIN,
    max_categories: int = MAX_CATEGORIES,
    max_classes: int = MAX_CLASSES,
) -> Inferred:
    """Profile ``table`` into a draft contract.

    Args:
        table: the data, one column per feature plus the label (and id, event time).
        name: the contract (= model) name.
        label: the label column.
        id: the event id column; without one, a column called ``id`` if the file has
            it, else the draft names ``id`` and says (in :attr:`Inferred.notes`) that the
            file lacks it.
        event_time: the event time column (none: ingestion time).
        drop: columns that are not features (a model's old predictions, leaks).
        margin: share of each numeric span added to its range on both sides.
        max_categories: text columns with more distinct values are left out.
        max_classes: a numeric label with at most this many integer values is classes.
    """
    columns = table.column_names
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise InferenceError(f"column names appear more than once: {twice}")
    for role, column in (("label", label), ("id", id), ("event time", event_time)):
        if column is not None and column not in columns:
            raise InferenceError(f"{role} column {column!r} is not in the file ({columns})")
    unknown = [c for c in drop if c not in columns]
    if unknown:
        raise InferenceError(f"--drop: {unknown} not in the file ({columns})")
    task, label_spec = _label(label, table.column(label), max_classes)
    notes: list[str] = []
    if id is None:
        if "id" in columns:
            id = "id"
        else:
            notes.append(
                "No id column: every event needs one ('id' here); add it to the data or "
                "set 'id' to the column that identifies a row."
            )
    roles = {label, *(c for c in (id, event_time) if c), *drop}
    features: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for column in columns:
        if column in roles:
            continue
        try:
            check_name(column)
        except ValueError as err:
            skipped[column] = str(err)
            continue
        spec = _feature(column, table.column(column), margin, max_categories)
        if isinstance(spec, str):
            skipped[column] = spec
        else:
            features.append(spec)
    if not features:
        raise InferenceError(f"no usable feature column (left out: {skipped})")
    rows = table.num_rows
    data: dict[str, Any] = {
        "name": name,
        "task": task,
        "id": id or "id",
        **({"event_time": event_time} if event_time else {}),
        "label": label_spec,
        "features": features,
        "training": {"min_rows": max(10, min(MIN_ROWS_CAP, rows))},
        "promotion": {"primary_metric": _primary_metric(task, label_spec)},
    }
    return Inferred(parse_contract(data, f"{name}.yaml"), data, skipped, notes)


def _primary_metric(task: str, label_spec: dict[str, Any]) -> str:
    if task == "regression":
        return "mae"
    return "roc_auc" if len(label_spec["classes"]) == 2 else "accuracy"


def _flow(value: Any) -> str:
    text = yaml.safe_dump(
        value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=1 << 20
    )
    return text.strip().removesuffix("...").strip()


def to_yaml(inferred: Inferred, source: str) -> str:
    """The draft as YAML (one line per feature), headed by its source and what was left out."""
    lines = [
        f"# Draft contract inferred from {source} by `flywheel contract infer`.",
        "# Review it: ranges carry a margin, integer codes that mean categories are typed",
        "# int, and groups (fairness slices) and policies are yours to set.",
    ]
    lines += [f"# Left out: {col!r}: {why}" for col, why in inferred.skipped.items()]
    lines += [f"# To do: {note}" for note in inferred.notes]
    for key, value in inferred.data.items():
        if key == "features":
            lines.append("features:")
            lines += [f"  - {_flow(f)}" for f in value]
        else:
            lines.append(f"{key}: {_flow(value)}")
    return "\n".join(lines) + "\n"
