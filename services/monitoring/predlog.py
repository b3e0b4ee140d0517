"""The prediction log: served rows and their late labels as immutable Parquet objects.

Layout (keys below the store root)::

    predictions/<model>/date=YYYY-MM-DD/<sha256>.parquet   served rows
    feedback/<model>/date=YYYY-MM-DD/<sha256>.parquet      labels joined to a prediction
    feedback/_late/date=YYYY-MM-DD/<sha256>.parquet        labels whose prediction was not waiting

Rows are buffered and written per ``flush_rows`` rows or ``flush_s`` seconds; the Kafka
adapter commits offsets (and the join snapshots) only after :meth:`PredictionLog.flush`,
so a crash replays the unwritten rows, never loses them. A crash between a flush and its
commit writes the replayed rows a second time (in another object); the log is read
through :func:`read_log`, which keeps each prediction (and each label of a prediction)
once, so every reader sees each served row exactly once. ``flywheel lineage``
(:mod:`shared.cli.lineage`) reads it back.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pyarrow as pa

from shared.events import Feedback, Prediction
from shared.store import ArtifactStore

LATE = "_late"

PREDICTION_SCHEMA = pa.schema(
    [
        ("prediction_id", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.int64()),
        ("data_version", pa.string()),
        ("request_id", pa.string()),
        ("role", pa.string()),
        ("created", pa.string()),
        ("latency_ms", pa.float64()),
        ("inputs", pa.string()),
        ("outputs", pa.string()),
        ("shadow", pa.string()),
    ]
)
FEEDBACK_SCHEMA = pa.schema(
    [
        ("prediction_id", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.int64()),
        ("label", pa.string()),
        ("received", pa.string()),
    ]
)


def _date(iso: str) -> str:
    return iso[:10]


class PredictionLog:
    """Buffers rows and writes them as content-addressed Parquet partitions.

    Args:
        store: the artifact store.
        flush_rows: rows buffered before a write.
        flush_s: longest time a row stays buffered.
    """

    def __init__(self, store: ArtifactStore, flush_rows: int, flush_s: float):
        self.store = store
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._predictions: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._feedback: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._since: float | None = None

    @property
    def pending(self) -> int:
        """Buffered rows."""
        return sum(map(len, self._predictions.values())) + sum(map(len, self._feedback.values()))

    def pending_kinds(self) -> dict[str, int]:
        """Buffered rows by kind (prediction, feedback)."""
        return {
            "prediction": sum(map(len, self._predictions.values())),
            "feedback": sum(map(len, self._feedback.values())),
        }

    def add_prediction(self, p: Prediction) -> None:
        """Buffer one served row."""
        created = p.created.isoformat()
        self._buffer(
            self._predictions,
            (p.model, _date(created)),
            {
                "prediction_id": p.id,
                "model": p.model,
                "model_version": p.model_version,
                "data_version": p.data_version,
                "request_id": p.request_id,
                "role": p.role,
                "created": created,
                "latency_ms": p.latency_ms,
                "inputs": json.dumps(p.inputs, default=str),
                "outputs": json.dumps(p.outputs, default=str),
                "shadow": json.dumps(p.shadow, default=str) if p.shadow is not None else None,
            },
        )

    def add_feedback(
        self, fb: Feedback, model: str | None, version: int | None, received: str
    ) -> None:
        """Buffer one label (``model`` None: its prediction was not waiting)."""
        self._buffer(
            self._feedback,
            (model or LATE, _date(received)),
            {
                "prediction_id": fb.prediction_id,
                "model": model,
                "model_version": version,
                "label": json.dumps(fb.label),
                "received": received,
            },
        )

    def _buffer(
        self,
        into: dict[tuple[str, str], list[dict[str, Any]]],
        key: tuple[str, str],
        row: dict[str, Any],
    ) -> None:
        into.setdefault(key, []).append(row)
        if self._since is None:
            self._since = time.monotonic()

    def due(self, now: float | None = None) -> bool:
        """True when the buffer should be written now."""
        if self._since is None:
            return False
        now = time.monotonic() if now is None else now
        return self.pending >= self.flush_rows or now - self._since >= self.flush_s

    def flush(self) -> list[str]:
        """Write every buffered row; the URIs written."""
        uris: list[str] = []
        for prefix, buffers, schema in (
            ("predictions", self._predictions, PREDICTION_SCHEMA),
            ("feedback", self._feedback, FEEDBACK_SCHEMA),
        ):
            for (model, date), rows in buffers.items():
                table = pa.Table.from_pylist(rows, schema=schema)
                _, uri = self.store.put_parquet(f"{prefix}/{model}/date={date}", table)
                uris.append(uri)
            buffers.clear()
        self._since = None
        return uris


DEDUP_KEYS = {"predictions": ["prediction_id"], "feedback": ["prediction_id", "label", "model"]}


def read_log(store: ArtifactStore, kind: str, model: str | None = None) -> pa.Table:
    """Every row of the ``predictions`` or ``feedback`` log (of ``model``, or all), each
    once: rows a replay wrote twice are kept at their first occurrence."""
    prefix = f"{kind}/{model}" if model else kind
    schema = PREDICTION_SCHEMA if kind == "predictions" else FEEDBACK_SCHEMA
    tables = [store.get_parquet(k) for k in store.list(prefix) if k.endswith(".parquet")]
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables).append_column(
        "_row", pa.array(range(sum(t.num_rows for t in tables)), pa.int64())
    )
    keys = DEDUP_KEYS[kind]
    first = table.group_by(keys, use_threads=False).aggregate([("_row", "min")])
    rows = np.sort(first["_row_min"].to_numpy())
    return table.take(pa.array(rows)).drop_columns(["_row"])
