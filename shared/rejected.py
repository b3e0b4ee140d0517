"""Rejected rows: every row validation leaves out of a dataset version, and why.

Validation writes one Parquet object per batch with failing rows, at
``validation/<dataset>/rejected/<batch_id>.parquet``: one line per (row, rule) it failed,
with the row's event id, its position in the raw batch, the rule, the column the rule
read and that column's value as text. ``flywheel rejected <dataset>`` reads them back.
"""

from __future__ import annotations

import pyarrow as pa

from shared.store import ArtifactStore, parquet_bytes

SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string()),
        pa.field("batch_id", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("rule", pa.string()),
        pa.field("column", pa.string()),
        pa.field("value", pa.string()),
    ]
)
"""One line per (row, rule failed); ``value`` is the column's value as text (None: null)."""


def key(dataset: str, batch_id: str) -> str:
    """The store key of one batch's rejected rows."""
    return f"validation/{dataset}/rejected/{batch_id}.parquet"


def write(store: ArtifactStore, dataset: str, batch_id: str, table: pa.Table) -> str:
    """Store a batch's rejected rows (``SCHEMA``); their URI. Rewriting the same rows
    (a replay) is a no-op, as the store's immutable writes are."""
    return store.put(key(dataset, batch_id), parquet_bytes(table.cast(SCHEMA)))


def read(store: ArtifactStore, dataset: str, batch_id: str | None = None) -> pa.Table:
    """Rejected rows of ``dataset`` (one batch's, or every batch's), batch by batch."""
    keys = (
        [key(dataset, batch_id)]
        if batch_id is not None
        else store.list(f"validation/{dataset}/rejected")
    )
    tables = [store.get_parquet(k) for k in keys if store.exists(k)]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()
