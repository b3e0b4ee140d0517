"""Fetch the sample data sets into ``var/data`` (not committed).

From the ``nannyml`` wheel on PyPI (Apache-2.0), which bundles
- ``employment_MA_*.pq``: US Census ACS PUMS employment data for Massachusetts
  (public data, via folktables), reference year 2015, analysis 2016-2018;
- ``synthetic_car_loan_*.csv``: NannyML's synthetic car-loan data, whose analysis
  half drifts.
Only these files are extracted; nannyml itself is never installed (its dependency
pins would break ``pip check``).

From scikit-learn's bundled data (BSD-3-Clause; no download), written here:
- ``iris_*.jsonl``: Fisher's iris measurements (R. A. Fisher, 1936, "The use of multiple
  measurements in taxonomic problems"; UCI Machine Learning Repository), 150 flowers,
  ``sklearn.datasets.load_iris``: the four measurements under their original names
  (``sepal length (cm)``...), ``species`` as its name (setosa, versicolor, virginica),
  ``id`` the row number in scikit-learn's order;
- ``diabetes_*.pq``: the diabetes data of Efron, Hastie, Johnstone and Tibshirani
  (2004), "Least Angle Regression", Annals of Statistics, 442 patients,
  ``sklearn.datasets.load_diabetes(scaled=False)``: age, sex (1/2), bmi, bp and six
  blood serum measurements s1-s6 in their original units, ``disease_progression`` a
  quantitative measure one year after baseline (25-346), ``patient_id`` the row number.
Both are shuffled with a fixed seed (the iris rows come sorted by species) and split
into a reference part with labels (iris 100 rows, diabetes 300) and an analysis part
without (``*_analysis``; its labels in ``*_analysis_target``, joined on the id). Event
times are chosen: one row per hour for iris (``measured_at``, ISO-8601 UTC strings from
2024-01-01T00:00:00Z) and one per six hours for diabetes (``visit_time``, a UTC timestamp
column from 2024-01-01), in shuffled order, so the analysis part is the later one.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

WHEEL = "nannyml==0.13.1"
FILES = (
    "employment_MA_reference.pq",
    "employment_MA_analysis.pq",
    "employment_MA_analysis_target.pq",
    "synthetic_car_loan_reference.csv",
    "synthetic_car_loan_analysis.csv",
    "synthetic_car_loan_analysis_target.csv",
)


SKLEARN_FILES = (
    "iris_reference.jsonl",
    "iris_analysis.jsonl",
    "iris_analysis_target.jsonl",
    "diabetes_reference.pq",
    "diabetes_analysis.pq",
    "diabetes_analysis_target.pq",
)
SEED = 2024
START = datetime(2024, 1, 1, tzinfo=UTC)


def _parts(
    frame: pd.DataFrame, id_col: str, time_col: str, times: Sequence[object], reference_rows: int
) -> dict[str, pd.DataFrame]:
    """Shuffled and timed: reference (labelled), analysis (unlabelled), analysis_target."""
    label = frame.columns[-1]
    frame = frame.sample(frac=1.0, random_state=SEED).reset_index(names=id_col)
    frame.insert(1, time_col, times)
    analysis = frame.iloc[reference_rows:]
    return {
        "reference": frame.iloc[:reference_rows],
        "analysis": analysis.drop(columns=[label]),
        "analysis_target": analysis[[id_col, label]],
    }


def write_sklearn_data(out: Path) -> None:
    """Iris (JSONL) and diabetes (Parquet) from scikit-learn's bundled files."""
    from sklearn.datasets import load_diabetes, load_iris

    iris = load_iris(as_frame=True)
    frame = iris.frame.rename(columns={"target": "species"})
    frame["species"] = [str(iris.target_names[i]) for i in frame["species"]]
    hours = [START + timedelta(hours=i) for i in range(len(frame))]
    stamps = [t.isoformat().replace("+00:00", "Z") for t in hours]
    for part, rows in _parts(frame, "id", "measured_at", stamps, 100).items():
        rows.to_json(out / f"iris_{part}.jsonl", orient="records", lines=True, force_ascii=False)

    diabetes = load_diabetes(as_frame=True, scaled=False)
    frame = diabetes.frame.rename(columns={"target": "disease_progression"})
    visits = list(pd.date_range(START, periods=len(frame), freq="6h"))
    for part, rows in _parts(frame, "patient_id", "visit_time", visits, 300).items():
        rows.to_parquet(out / f"diabetes_{part}.pq", index=False)


def main(dest: str = "var/data") -> int:
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    if not all((out / f).exists() for f in SKLEARN_FILES):
        write_sklearn_data(out)
    (out / "SOURCE.md").write_text(__doc__ or "", encoding="utf-8")
    if all((out / f).exists() for f in FILES):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp]
        subprocess.run(cmd, check=True)
        wheel = next(Path(tmp).glob("nannyml-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for name in FILES:
                (out / name).write_bytes(zf.read(f"nannyml/datasets/data/{name}"))
    print(f"sample data in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
