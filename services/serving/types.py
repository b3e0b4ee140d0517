"""Transport-free request and response of the data plane."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .tensors import Tensor


@dataclass(slots=True)
class InferRequest:
    """An inference request after decoding (no protobuf)."""

    model_name: str
    model_version: str
    id: str
    inputs: list[Tensor]
    outputs: list[str] = field(default_factory=list)
    """Requested output names; empty means all."""
    raw: bool = False
    """The request carried raw contents: answer with raw contents too."""


@dataclass(slots=True)
class OutputTensor:
    """One output: name, OIP datatype, shape and values (``bytes`` objects for BYTES)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | Sequence[bytes]


@dataclass(slots=True)
class InferResponse:
    """An inference response before encoding."""

    model_name: str
    model_version: str
    id: str
    parameters: dict[str, str]
    outputs: list[OutputTensor]
    raw: bool
