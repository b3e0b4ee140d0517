"""``python -m services.serving``: run the serving service until SIGTERM."""

from __future__ import annotations

import sys

from shared.service import run_service

from .app import build
from .settings import ServingSettings


def main() -> int:
    """Run the service; the exit code."""
    return run_service("serving", ServingSettings(), build)


if __name__ == "__main__":
    sys.exit(main())
