"""Training data from a dataset version: a time-ordered split into train and holdout.

The holdout is the latest slice of event time (the "future data" test). Rows are
ordered by event time, ties broken by the id column (so a data set whose rows share
one event time — the census reference is all 2015 — holds out its latest ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shared.contract import Contract
from shared.features import table_to_frame


class TrainingDataError(ValueError):
    """A dataset version that cannot be trained on (missing columns, too few rows)."""


@dataclass(frozen=True)
class Split:
    """Features and labels of the training part and of the holdout."""

    x_train: pd.DataFrame
    y_train: np.ndarray
    x_holdout: pd.DataFrame
    y_holdout: np.ndarray
    holdout: dict[str, Any]
    """How the holdout was chosen, in words and figures (for the model card)."""


def _labels(contract: Contract, table: pa.Table) -> np.ndarray:
    raw = table.column(contract.label.name).to_numpy(zero_copy_only=False)
    if contract.task == "regression":
        return np.asarray(raw, dtype=np.float64)
    classes = contract.label.classes or []
    # Labels arrive as ints or strings; compare as strings so 1 and "1" are one class.
    by_text = {str(c): c for c in classes}
    unknown = sorted({str(v) for v in raw} - set(by_text))
    if unknown:
        raise TrainingDataError(f"label {contract.label.name!r} has unknown classes {unknown[:5]}")
    return np.asarray([by_text[str(v)] for v in raw])


def _order(contract: Contract, table: pa.Table) -> np.ndarray:
    keys: list[tuple[str, str]] = []
    if contract.event_time and contract.event_time in table.column_names:
        keys.append((contract.event_time, "ascending"))
    if contract.id in table.column_names:
        keys.append((contract.id, "ascending"))
    if not keys:
        return np.arange(table.num_rows)
    return np.asarray(pc.sort_indices(table, sort_keys=keys))


def _time_text(table: pa.Table, column: str | None, index: int) -> str | None:
    if column is None or column not in table.column_names:
        return None
    return str(table.column(column)[index].as_py())


def split(
    contract: Contract,
    table: pa.Table,
    *,
    holdout_fraction: float,
    max_train_rows: int | None = None,
) -> Split:
    """Order ``table`` by event time (then id) and hold out its latest share.

    Args:
        contract: the data contract.
        table: every row of the dataset version.
        holdout_fraction: the latest share of rows kept out.
        max_train_rows: keep only the latest this many training rows.
    """
    missing = [
        c for c in [*contract.feature_names, contract.label.name] if c not in table.column_names
    ]
    if missing:
        raise TrainingDataError(f"dataset has no column(s) {missing}")
    n = table.num_rows
    n_holdout = round(n * holdout_fraction)
    if n_holdout < 10 or n - n_holdout < 10:
        raise TrainingDataError(f"{n} rows are too few for a holdout of {holdout_fraction:.0%}")
    ordered = table.take(pa.array(_order(contract, table)))
    train = ordered.slice(0, n - n_holdout)
    holdout = ordered.slice(n - n_holdout)
    dropped = 0
    if max_train_rows is not None and train.num_rows > max_train_rows:
        dropped = train.num_rows - max_train_rows
        train = train.slice(dropped)
    y_train = _labels(contract, train)
    y_holdout = _labels(contract, holdout)
    if contract.task == "classification" and len(set(y_train.tolist())) < 2:
        raise TrainingDataError("the training rows hold a single class")
    time_col = contract.event_time
    id_col = contract.id if contract.id in table.column_names else None
    first = _time_text(holdout, time_col, 0)
    last = _time_text(holdout, time_col, holdout.num_rows - 1)
    same_time = first is not None and first == _time_text(train, time_col, train.num_rows - 1)
    words = (
        f"the latest {holdout_fraction:.0%} of rows by {time_col or 'row order'}"
        + (f", ties broken by {id_col}" if id_col else "")
        + (
            f"; the training rows share the holdout's event time {first}, so the holdout"
            f" is the latest {id_col or 'rows'} within it"
            if same_time
            else ""
        )
    )
    description: dict[str, Any] = {
        "method": "time-ordered",
        "description": words,
        "fraction": holdout_fraction,
        "rows": holdout.num_rows,
        "train_rows": train.num_rows,
        "train_rows_dropped": dropped,
        "event_time_column": time_col,
        "first_event_time": first,
        "last_event_time": last,
        "train_last_event_time": _time_text(train, time_col, train.num_rows - 1),
        "first_id": _time_text(holdout, id_col, 0),
        "last_id": _time_text(holdout, id_col, holdout.num_rows - 1),
    }
    return Split(
        x_train=table_to_frame(contract, train),
        y_train=y_train,
        x_holdout=table_to_frame(contract, holdout),
        y_holdout=y_holdout,
        holdout=description,
    )


def corrupt_labels(
    contract: Contract, y: np.ndarray, share: float, seed: int
) -> tuple[np.ndarray, int]:
    """Flip ``share`` of the labels (seeded): the deliberately-worse-model test hook.

    Classes move to the next class; regression targets are reversed around their mean.
    Returns the new labels and how many were changed.
    """
    if share <= 0:
        return y, 0
    rng = np.random.default_rng(seed)
    picked = rng.random(len(y)) < share
    out = y.copy()
    if contract.task == "regression":
        out[picked] = 2 * float(np.mean(y)) - y[picked]
    else:
        classes = list(contract.label.classes or [])
        nxt = {c: classes[(i + 1) % len(classes)] for i, c in enumerate(classes)}
        out[picked] = [nxt[v] for v in y[picked].tolist()]
    return out, int(picked.sum())
