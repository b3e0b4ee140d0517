"""A data file as an Arrow table: what ``flywheel publish`` and ``contract infer`` read.

CSV headers, Parquet and JSON keys keep their names exactly (``sepal length (cm)``).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa


def read_table(path: str | Path) -> pa.Table:
    """A CSV, Parquet or JSON-lines file as an Arrow table (by extension).

    Raises ValueError for another extension.
    """
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pq.read_table(p)
    if suffix == ".csv":
        return pcsv.read_csv(p)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return pjson.read_json(p)
    raise ValueError(f"{p}: unknown file type {suffix!r} (use .csv, .parquet/.pq or .jsonl)")
