"""``python -m services.validation``: run the validation service until SIGTERM."""

from __future__ import annotations

import sys

from shared.service import run_service

from .app import build
from .settings import ValidationSettings


def main() -> int:
    """Run the service; the exit code."""
    return run_service("validation", ValidationSettings(), build)


if __name__ == "__main__":
    sys.exit(main())
