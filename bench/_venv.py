"""Side venvs for the peers a benchmark compares against (never project dependencies)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def ensure_venv(folder: Path, packages: list[str], marker: str) -> Path:
    """``folder``'s ``bin/`` after installing ``packages`` into it on first use.

    ``marker`` is a file name under ``bin/`` whose presence means the install finished
    (an executable the packages ship, or ``python`` for libraries). The finished
    install records its package list, so a changed list installs again.
    """
    bin_dir = folder / "bin"
    done = folder / ".installed"
    wanted = "\n".join(packages)
    if done.exists() and (bin_dir / marker).exists() and done.read_text() == wanted:
        return bin_dir
    if not (bin_dir / "pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    subprocess.run([str(bin_dir / "pip"), "install", "-q", *packages], check=True)
    done.write_text(wanted)
    return bin_dir
