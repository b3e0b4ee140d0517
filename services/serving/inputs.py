"""What a model accepts, derived from its data contract, and turning tensors into feeds.

Two request styles are accepted. ``ModelMetadata`` lists the second as the model's
``inputs`` (so a generic client that builds one tensor per listed input sends a valid
request) and describes the first in the model's parameters (``matrix_input``: a JSON
object with name, datatype, shape, columns and category_encoding):

* one 2-D tensor named ``input``, FP32 or FP64, shape ``[N, F]``, columns in contract
  feature order. Numeric features are taken as they are. A category column carries a
  number: the category's value itself when every value in the contract's vocabulary is
  numeric (census ``SCHL`` 16.0 means ``"16"``), otherwise the value's index in the
  contract's ``values`` list (car-loan ``salary_range`` 1.0 means ``"20K - 40K €"``).
  NaN is a null: allowed only where the contract says ``nullable``.
* one tensor per feature, shape ``[N]`` or ``[N, 1]``: FP32, FP64, INT32, INT64 or BOOL
  for numeric features, BYTES (UTF-8) for categories (empty string = null). Each tensor
  is named exactly as the contract names the feature (``sepal length (cm)``).

A null, where the contract says ``nullable``: NaN in an FP32/FP64 tensor (either
style), an empty string in a BYTES tensor, or, one tensor per feature, the feature's
tensor left out (every row null, as an absent feature in a data event). INT32, INT64
and BOOL tensors have no null; send such a column as FP32 with NaN.

Names and values are any text, so the parameters listing them (``columns``,
``category_encoding``, ``values``) are JSON. A feature may even be called ``input``: a
lone tensor of that name is then the matrix only when shaped ``[N, F]`` with ``F > 1``
(a contract whose one feature is ``input`` has no separate matrix style).

Values outside a category's vocabulary, nulls the contract forbids, wrong names,
datatypes, shapes and oversized batches are INVALID_ARGUMENT errors naming the tensor.
The result is the ONNX Runtime feeds of :func:`shared.features.onnx_feeds` (one
``[N, 1]`` tensor per feature), so serving runs exactly what training exported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.contract import Contract, Feature
from shared.features import MISSING_CATEGORY

from .errors import invalid
from .tensors import Tensor

MATRIX_INPUT = "input"
MATRIX_DATATYPES = ("FP32", "FP64")
NUMERIC_DATATYPES = ("FP32", "FP64", "INT32", "INT64", "BOOL")
CATEGORY_DATATYPE = "BYTES"

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One accepted or produced tensor, as ``ModelMetadata`` reports it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: dict[str, str]


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class CategoryCodec:
    """Numbers in a 2-D ``input`` tensor to a category's string values (vectorised)."""

    def __init__(self, feature: Feature):
        vocab = list(feature.values or [])
        self.feature = feature
        self.by_value = all(_is_number(v) for v in vocab)
        keys = np.array([float(v) for v in vocab] if self.by_value else range(len(vocab)), float)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.labels = np.array(vocab, dtype=object)[order]
        self.encoding = "value" if self.by_value else "index"

    def decode(self, column: np.ndarray) -> np.ndarray:
        """String values for ``column`` (float64); nulls become the missing category."""
        idx = np.searchsorted(self.keys, column)
        np.minimum(idx, len(self.keys) - 1, out=idx)
        known = self.keys[idx] == column
        if known.all():
            return self.labels[idx]
        nulls = np.isnan(column)
        bad = ~known & ~nulls
        name = self.feature.name
        if bad.any():
            row = int(np.argmax(bad))
            what = "values" if self.by_value else "indices into the contract's values"
            value = float(column[row])
            raise invalid(
                f"input {MATRIX_INPUT!r}: column {name!r} row {row}: {value!r} is not one of the "
                f"category's {what}"
            )
        if not self.feature.nullable:
            row = int(np.argmax(nulls))
            raise invalid(
                f"input {MATRIX_INPUT!r}: column {name!r} row {row}: NaN, but {name!r} is not "
                "nullable"
            )
        out = self.labels[idx]
        out[nulls] = MISSING_CATEGORY
        return out


DENSE_LIMIT = 100_000
"""Largest category key decoded through a dense lookup table (else binary search)."""
SMALL_ROWS = 8
"""Up to this many rows, category columns are decoded by dict lookups in Python: a
handful of numpy calls cost more than a few dozen lookups (batch-1 latency)."""


class MatrixCategories:
    """All category columns of a 2-D ``input`` tensor decoded in one vectorised pass.

    When every key (value or index) is a small non-negative integer - the usual case -
    one flat table maps ``offset[column] + key`` to a position in a combined label array,
    so a request costs a handful of numpy calls however many categories there are.
    Otherwise each column falls back to :class:`CategoryCodec`.
    """

    def __init__(self, columns: list[int], codecs: list[CategoryCodec]):
        self.columns = np.array(columns, dtype=np.intp)
        self.codecs = codecs
        # The same keys and labels as the codecs, as one dict per column. NaN is never a
        # key (NaN != NaN): nulls, like unknown keys, take the vectorised path below.
        self.lookups = [dict(zip(c.keys.tolist(), c.labels.tolist(), strict=True)) for c in codecs]
        keys = [c.keys for c in codecs]
        self.dense = bool(codecs) and all(
            np.all(k == np.round(k)) and k.min() >= 0 and k.max() <= DENSE_LIMIT for k in keys
        )
        if not self.dense:
            return
        sizes = [int(k.max()) + 1 for k in keys]
        self.maxes = np.array([s - 1 for s in sizes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.table = np.full(sum(sizes), -1, dtype=np.int64)
        labels: list[object] = []
        for codec, offset in zip(codecs, self.offsets, strict=True):
            for key, label in zip(codec.keys, codec.labels, strict=True):
                self.table[offset + int(key)] = len(labels)
                labels.append(label)
        labels.append(MISSING_CATEGORY)
        self.labels = np.array(labels, dtype=object)
        self.missing = len(labels) - 1

    def decode(self, matrix: np.ndarray) -> np.ndarray:
        """String values [N, K] of the category columns of ``matrix`` [N, F], in Fortran
        order: each column ``[:, k : k + 1]`` is a contiguous view, an ONNX feed as it is."""
        if len(matrix) <= SMALL_ROWS:
            try:
                by_column = [
                    [lookup[v] for v in column]
                    for lookup, column in zip(
                        self.lookups, matrix.T[self.columns].tolist(), strict=True
                    )
                ]
            except KeyError:
                pass  # a null or an unknown key: the vectorised path maps or names it
            else:
                return np.array(by_column, dtype=object).T
        values = matrix[:, self.columns].astype(np.float64, copy=False)
        if not self.dense:
            return np.asfortranarray(
                np.stack([c.decode(values[:, j]) for j, c in enumerate(self.codecs)], axis=1)
            )
        with np.errstate(invalid="ignore"):
            ints = values.astype(np.int64)
        ok = (ints == values) & (ints >= 0) & (ints <= self.maxes)
        pos = np.where(ok, self.table[np.where(ok, self.offsets + ints, 0)], -1)
        if (pos < 0).any():
            # Let the per-column codec name the first bad value (or map nullable NaNs).
            out = self.labels[np.maximum(pos, 0).T].T
            for j in np.flatnonzero((pos < 0).any(axis=0)):
                out[:, j] = self.codecs[j].decode(values[:, j])
            return out
        # Indexing with the transposed positions builds the [K, N] array row by row; its
        # transpose is the [N, K] result with contiguous columns (no copy per feed).
        return self.labels[pos.T].T


class InputSpec:
    """The accepted inputs of one contract and their conversion to ONNX feeds.

    Args:
        contract: the model's data contract.
        max_batch_size: the most rows one request may carry.
    """

    def __init__(self, contract: Contract, max_batch_size: int):
        self.contract = contract
        self.max_batch_size = max_batch_size
        self.features = list(contract.features)
        self.names = [f.name for f in self.features]
        self.by_name = {f.name: f for f in self.features}
        self.numeric = frozenset(f.name for f in self.features if f.is_numeric)
        self.codecs = {f.name: CategoryCodec(f) for f in self.features if not f.is_numeric}
        cat_columns = [j for j, f in enumerate(self.features) if not f.is_numeric]
        self.matrix_categories = MatrixCategories(cat_columns, list(self.codecs.values()))
        self.numeric_columns = [(j, f) for j, f in enumerate(self.features) if f.is_numeric]
        self.numeric_index = np.array([j for j, _ in self.numeric_columns], dtype=np.intp)
        self.strict_index = np.array(
            [k for k, (_, f) in enumerate(self.numeric_columns) if not f.nullable], dtype=np.intp
        )
        """Positions (within the numeric columns) of those that may not be NaN."""
        self.category_columns = [
            (k, f.name) for k, f in enumerate(self.features) if not f.is_numeric
        ]
        self.vocab = {
            f.name: frozenset(f.values or ()) | ({""} if f.nullable else frozenset())
            for f in self.features
            if not f.is_numeric
        }
        self.tensors = self._describe()

    @property
    def matrix_input(self) -> str | None:
        """The one-matrix request style as JSON, for the model's metadata parameters (None
        when the contract's one feature is itself called ``input``)."""
        if self.names == [MATRIX_INPUT]:
            return None
        # Names and values are any text (commas included), so lists are JSON.
        return _json(
            {
                "name": MATRIX_INPUT,
                "datatype": "FP32",
                "accepted_datatypes": ["FP32", "FP64"],
                "shape": [-1, len(self.names)],
                "columns": self.names,
                "category_encoding": {n: c.encoding for n, c in self.codecs.items()},
                "description": (
                    "all features as one [N, F] tensor in contract order, instead of one "
                    "tensor per feature; a category column holds its value when the "
                    "vocabulary is numeric (encoding=value), else its index in the contract's "
                    "values (encoding=index); NaN is null where nullable"
                ),
            }
        )

    def _describe(self) -> list[TensorSpec]:
        specs: list[TensorSpec] = []
        for f in self.features:
            params: dict[str, str] = {"type": f.type, "nullable": str(f.nullable).lower()}
            if f.is_numeric:
                params["accepted_datatypes"] = ",".join(NUMERIC_DATATYPES)
            else:
                params["values"] = _json(f.values or [])
                params["accepted_datatypes"] = CATEGORY_DATATYPE
            if f.description:
                params["description"] = f.description
            if f.owner:
                params["owner"] = f.owner
            dtype = "FP32" if f.is_numeric else CATEGORY_DATATYPE
            specs.append(TensorSpec(f.name, dtype, (-1,), params))
        return specs

    def _rows(self, name: str, rows: int) -> None:
        if rows < 1:
            raise invalid(f"input {name!r}: the batch is empty")
        if rows > self.max_batch_size:
            raise invalid(
                f"input {name!r}: batch of {rows} rows is over the maximum of {self.max_batch_size}"
            )

    def feeds(self, tensors: Sequence[Tensor]) -> tuple[Feeds, int]:
        """ONNX feeds and the row count for a request's input tensors."""
        if len(tensors) == 1 and self._is_matrix(tensors[0]):
            return self._matrix(tensors[0])
        return self._columns(tensors)

    def _is_matrix(self, t: Tensor) -> bool:
        if t.name != MATRIX_INPUT:
            return False
        if MATRIX_INPUT not in self.by_name:
            return True
        # A feature is called "input" too: the matrix is then only an [N, F] tensor of
        # F > 1 columns (with one feature the two styles are one tensor, read per feature).
        return len(self.names) > 1 and len(t.shape) == 2 and t.shape[1] == len(self.names)

    def _matrix(self, t: Tensor) -> tuple[Feeds, int]:
        if t.datatype not in MATRIX_DATATYPES:
            raise invalid(
                f"input {t.name!r}: datatype {t.datatype} is not accepted; use FP32 or FP64"
            )
        width = len(self.names)
        if len(t.shape) != 2 or t.shape[1] != width:
            raise invalid(
                f"input {t.name!r}: shape {list(t.shape)} is not [N, {width}] "
                f"(columns: {', '.join(self.names)})"
            )
        rows = t.shape[0]
        self._rows(t.name, rows)
        matrix = t.values.reshape(rows, width)
        feeds: Feeds = {}
        if self.numeric_index.size:
            # Every numeric column in one block, built transposed ([K, N], one row per
            # feature) so that its transpose has contiguous [N, 1] columns: the feeds are
            # views, and forbidden NaNs are found in one pass (first feature, first row).
            block = matrix.T[self.numeric_index].astype(np.float32, copy=False)
            if self.strict_index.size:
                nans = np.isnan(block[self.strict_index])
                if nans.any():
                    k, row = (int(i[0]) for i in np.nonzero(nans))
                    name = self.numeric_columns[int(self.strict_index[k])][1].name
                    raise invalid(
                        f"input {t.name!r}: column {name!r} row {row}: NaN, but {name!r} is "
                        "not nullable"
                    )
            columns = block.T
            for k, (_, f) in enumerate(self.numeric_columns):
                feeds[f.name] = columns[:, k : k + 1]
        if self.codecs:
            categories = self.matrix_categories.decode(matrix)
            for k, (_, name) in enumerate(self.category_columns):
                feeds[name] = categories[:, k : k + 1]
        return feeds, rows

    def _columns(self, tensors: Sequence[Tensor]) -> tuple[Feeds, int]:
        given = {t.name for t in tensors}
        unknown = sorted(given - set(self.names))
        if unknown:
            raise invalid(
                f"input {unknown[0]!r}: unknown tensor; send {MATRIX_INPUT!r} [N, F] or one "
                f"tensor per feature ({', '.join(self.names)})"
            )
        if len(given) != len(tensors):
            dup = next(t.name for t in tensors if [u.name for u in tensors].count(t.name) > 1)
            raise invalid(f"input {dup!r}: sent more than once")
        missing = [n for n in self.names if n not in given]
        required = [n for n in missing if not self.by_name[n].nullable]
        if required:
            raise invalid(f"input {required[0]!r}: missing (features missing: {required})")
        if not tensors:
            raise invalid("the request has no input tensors")
        rows = -1
        feeds: Feeds = {}
        for t in tensors:
            if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
                raise invalid(f"input {t.name!r}: shape {list(t.shape)} is not [N] or [N, 1]")
            if rows == -1:
                rows = t.shape[0]
                self._rows(t.name, rows)
            elif t.shape[0] != rows:
                raise invalid(f"input {t.name!r}: {t.shape[0]} rows, but other inputs have {rows}")
            f = self.by_name[t.name]
            feeds[t.name] = self._numeric(t, f) if f.is_numeric else self._category(t, f)
        for name in missing:  # nullable features left out: null in every row
            feeds[name] = (
                np.full((rows, 1), np.nan, dtype=np.float32)
                if name in self.numeric
                else np.full((rows, 1), MISSING_CATEGORY, dtype=object)
            )
        return feeds, rows

    def _numeric(self, t: Tensor, f: Feature) -> np.ndarray:
        if t.datatype not in NUMERIC_DATATYPES:
            raise invalid(
                f"input {t.name!r}: datatype {t.datatype} is not accepted for a {f.type} "
                f"feature; use one of {', '.join(NUMERIC_DATATYPES)}"
            )
        column = t.values.astype(np.float32).reshape(-1, 1)
        if not f.nullable and t.datatype in ("FP32", "FP64"):
            nans = np.isnan(column[:, 0])
            if nans.any():
                raise invalid(
                    f"input {t.name!r}: row {int(np.argmax(nans))}: NaN, but {f.name!r} is not "
                    "nullable"
                )
        return column

    def _category(self, t: Tensor, f: Feature) -> np.ndarray:
        if t.datatype != CATEGORY_DATATYPE:
            raise invalid(
                f"input {t.name!r}: datatype {t.datatype} is not accepted for a category; "
                f"use {CATEGORY_DATATYPE}"
            )
        vocab = self.vocab[f.name]
        out = np.empty((len(t.values), 1), dtype=object)
        for i, raw in enumerate(t.values):
            try:
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError:
                raise invalid(f"input {t.name!r}: row {i}: not valid UTF-8") from None
            if text not in vocab:
                allowed = ", ".join(f.values or [])
                raise invalid(
                    f"input {t.name!r}: row {i}: {text!r} is not one of the category's values "
                    f"({allowed})"
                )
            out[i, 0] = text or MISSING_CATEGORY
        return out
