"""``python -m services.ingestion``: run the ingestion service until SIGTERM."""

from __future__ import annotations

import sys

from shared.service import run_service

from .app import build
from .settings import IngestionSettings


def main() -> int:
    """Run the service; the exit code."""
    return run_service("ingestion", IngestionSettings(), build)


if __name__ == "__main__":
    sys.exit(main())
