"""``python -m services.training``: run the training service until SIGTERM."""

from __future__ import annotations

import sys

from shared.service import run_service

from .app import build
from .settings import TrainingSettings


def main() -> int:
    """Run the service; the exit code."""
    return run_service("training", TrainingSettings(), build)


if __name__ == "__main__":
    sys.exit(main())
