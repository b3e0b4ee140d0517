"""Structured logs: JSON lines by default, a readable console format as an option.

Every record carries the service name; callers bind model, versions and trace id
(``log.bind(model=..., model_version=..., trace_id=...)``) so they appear on each line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog


def configure_logging(
    service: str, fmt: Literal["json", "console"] = "json", level: str = "INFO"
) -> structlog.stdlib.BoundLogger:
    """Configure structlog and the stdlib root logger; returns the service's logger."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiokafka, faststream, grpc) log through stdlib: render them the same way.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[*shared, structlog.processors.add_log_level],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if level.upper() == "INFO" else level.upper())
    structlog.contextvars.bind_contextvars(service=service)
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(service=service)
    return logger


def get_logger(**bind: Any) -> structlog.stdlib.BoundLogger:
    """A logger with extra bound fields."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(**bind)
    return logger
