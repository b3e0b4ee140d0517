"""Tensors as the data plane sees them, and decoding of OIP v2 raw tensor bytes.

A :class:`Tensor` is transport-free: a name, an OIP datatype, a shape and a flat numpy
array (``object`` dtype of ``bytes`` for BYTES). The gRPC codec builds them from typed
``contents`` or from ``raw_input_contents``; this module knows the raw layout.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from shared.events import prediction_id

from .errors import invalid

NUMPY_DTYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""Fixed-size OIP datatypes and their little-endian numpy dtypes (BYTES is variable)."""

_LEN = struct.Struct("<I")


@dataclass(slots=True)
class Tensor:
    """One named tensor: ``values`` is flat, row-major, ``prod(shape)`` long."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray


def element_count(name: str, shape: tuple[int, ...]) -> int:
    """Elements a shape holds; INVALID_ARGUMENT for negative dimensions."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise invalid(f"input {name!r}: shape {list(shape)} has a negative dimension")
        count *= dim
    return count


def numpy_dtype(name: str, datatype: str) -> np.dtype[np.generic]:
    """The numpy dtype of a fixed-size OIP datatype; INVALID_ARGUMENT for BF16 (numpy has
    no bfloat16 and no served model takes one) and for names OIP does not define."""
    dtype = NUMPY_DTYPES.get(datatype)
    if dtype is not None:
        return dtype
    if datatype == "BF16":
        raise invalid(
            f"input {name!r}: datatype BF16 is not supported (no served model takes bfloat16); "
            "send FP32"
        )
    raise invalid(f"input {name!r}: unknown datatype {datatype!r}")


def decode_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    """A flat array from OIP raw bytes, checking the byte length against the shape."""
    count = element_count(name, shape)
    if datatype == "BYTES":
        return decode_bytes(name, raw, count)
    dtype = numpy_dtype(name, datatype)
    if len(raw) != count * dtype.itemsize:
        raise invalid(
            f"input {name!r}: raw contents hold {len(raw)} bytes, but shape {list(shape)} "
            f"of {datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype)


def decode_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    """BYTES elements (each a 4-byte little-endian length, then the bytes)."""
    out = np.empty(count, dtype=object)
    pos, end = 0, len(raw)
    for i in range(count):
        if pos + 4 > end:
            raise invalid(f"input {name!r}: raw BYTES contents end before element {i} of {count}")
        (size,) = _LEN.unpack_from(raw, pos)
        pos += 4
        if pos + size > end:
            raise invalid(f"input {name!r}: raw BYTES element {i} runs past the contents")
        out[i] = raw[pos : pos + size]
        pos += size
    if pos != end:
        raise invalid(
            f"input {name!r}: raw BYTES contents have {end - pos} bytes beyond {count} elements"
        )
    return out


def encode_bytes(values: Sequence[bytes] | np.ndarray) -> bytes:
    """OIP raw BYTES layout of ``values`` (``bytes`` objects)."""
    if isinstance(values, PredictionIds):
        return values.raw()
    return b"".join(_LEN.pack(len(v)) + v for v in values)


class PredictionIds(Sequence[bytes]):
    """The prediction ids of a request's rows, ``<key>-<i>``, made only when read.

    A response's ids are read once, by one encoder: the raw OIP BYTES layout
    (:meth:`raw`) is one ``bytes.join`` of the key into a template cached per key length
    and row count, instead of a bytes object, a length prefix and a join per row.

    Args:
        key: the request key.
        rows: the request's row count.
    """

    __slots__ = ("key", "rows")

    def __init__(self, key: str, rows: int):
        self.key = key
        self.rows = rows

    def __len__(self) -> int:
        return self.rows

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.rows))]
        if not -self.rows <= index < self.rows:
            raise IndexError(index)
        return prediction_id(self.key, index % self.rows).encode()

    def __iter__(self) -> Iterator[bytes]:
        key = self.key
        return (prediction_id(key, i).encode() for i in range(self.rows))

    def raw(self) -> bytes:
        """The OIP raw BYTES layout of every id."""
        key = self.key.encode()
        return key.join(_id_template(len(key), self.rows))


@functools.lru_cache(maxsize=256)
def _id_template(key_bytes: int, rows: int) -> list[bytes]:
    # shared.events.prediction_id's "<key>-<i>" (a test holds the two together): element
    # i is LEN(key + b"-i") + key + b"-i", so the pieces between the keys are
    # [LEN_0] + [b"-i" + LEN_(i+1)] ... + [b"-(n-1)"], the same for every key that long.
    suffixes = [f"-{i}".encode() for i in range(rows)]
    lengths = [_LEN.pack(key_bytes + len(s)) for s in suffixes]
    return [
        lengths[0],
        *(s + n for s, n in zip(suffixes[:-1], lengths[1:], strict=True)),
        suffixes[-1],
    ]
