"""Fetch the sample data sets into ``var/data`` (not committed).

Source: the ``nannyml`` wheel on PyPI (Apache-2.0), which bundles
- ``employment_MA_*.pq``: US Census ACS PUMS employment data for Massachusetts
  (public data, via folktables), reference year 2015, analysis 2016-2018;
- ``synthetic_car_loan_*.csv``: NannyML's synthetic car-loan data, whose analysis
  half drifts.
Only these files are extracted; nannyml itself is never installed (its dependency
pins would break ``pip check``).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "nannyml==0.13.1"
FILES = (
    "employment_MA_reference.pq",
    "employment_MA_analysis.pq",
    "employment_MA_analysis_target.pq",
    "synthetic_car_loan_reference.csv",
    "synthetic_car_loan_analysis.csv",
    "synthetic_car_loan_analysis_target.csv",
)


def main(dest: str = "var/data") -> int:
    out = Path(dest)
    if all((out / f).exists() for f in FILES):
        return 0
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp]
        subprocess.run(cmd, check=True)
        wheel = next(Path(tmp).glob("nannyml-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name in FILES:
                (out / name).write_bytes(zf.read(f"nannyml/datasets/data/{name}"))
    (out / "SOURCE.md").write_text(__doc__ or "", encoding="utf-8")
    print(f"sample data in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
