"""Tensors as the data plane sees them, and decoding of OIP v2 raw tensor bytes.

A :class:`Tensor` is transport-free: a name, an OIP datatype, a shape and a flat numpy
array (``object`` dtype of ``bytes`` for BYTES). The gRPC codec builds them from typed
``contents`` or from ``raw_input_contents``; this module knows the raw layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

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


def encode_bytes(values: list[bytes]) -> bytes:
    """OIP raw BYTES layout of ``values``."""
    return b"".join(_LEN.pack(len(v)) + v for v in values)
