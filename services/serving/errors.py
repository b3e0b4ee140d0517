"""The errors the data plane raises; adapters map their ``code`` to transport status."""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal["INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE", "INTERNAL"]


class ServingError(Exception):
    """A request the data plane cannot answer, with a status code and a clear message.

    Args:
        code: gRPC status code name (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...).
        message: what is wrong, naming the model or tensor concerned.
    """

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


def invalid(message: str) -> ServingError:
    """An INVALID_ARGUMENT error."""
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    """A NOT_FOUND error."""
    return ServingError("NOT_FOUND", message)
