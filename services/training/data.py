"""Training data from a dataset version: a time-ordered split into train and holdout.

The holdout is the latest slice of event time (the "future data" test). Rows are
ordered by real event time (a timestamp, :mod:`shared.eventtime`), never by its text,
ties broken by the id column — numerically when every id is an integer, so ``"9999"``
comes before ``"10000"``. When the holdout does not lie strictly after the training
rows (no event time, or every row sharing one — the census reference is all 2015 —
or the cut falling inside one time), the holdout record says it is not future data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shared import eventtime
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
    t_train: np.ndarray | None = None
    """Event times of the training rows (epoch microseconds, UTC; ascending, in the
    rows' order), None without an event time: the search's time-ordered folds."""


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


def _event_times(contract: Contract, table: pa.Table) -> pa.ChunkedArray | None:
    name = contract.event_time
    if name is None or name not in table.column_names:
        return None
    try:
        times = eventtime.to_timestamps(table.column(name))
    except eventtime.EventTimeError as err:
        raise TrainingDataError(f"event time {name!r}: {err}") from None
    if times.null_count:
        raise TrainingDataError(f"event time {name!r}: {times.null_count} rows have none")
    return times


def _id_key(table: pa.Table, id_col: str) -> pa.ChunkedArray:
    """The id column as a sort key: integers when every id is one, else the text."""
    ids = table.column(id_col)
    if pa.types.is_integer(ids.type):
        return ids
    text = ids.cast(pa.string())
    if pc.all(pc.match_substring_regex(text, r"^-?[0-9]{1,18}$")).as_py():
        return text.cast(pa.int64())
    return text


def _order(contract: Contract, table: pa.Table, times: pa.ChunkedArray | None) -> np.ndarray:
    keys: dict[str, pa.ChunkedArray] = {}
    if times is not None:
        keys["time"] = times
    if contract.id in table.column_names:
        keys["id"] = _id_key(table, contract.id)
    if not keys:
        return np.arange(table.num_rows)
    sort_keys = [(k, "ascending") for k in keys]
    return np.asarray(pc.sort_indices(pa.table(keys), sort_keys=sort_keys))


def _iso(times: np.ndarray | None, index: int) -> str | None:
    """The time at ``index`` of ``times`` (epoch microseconds) in ISO form."""
    if times is None:
        return None
    return str(pa.scalar(int(times[index]), eventtime.ARROW_TYPE).as_py().isoformat())


def _text(table: pa.Table, column: str | None, index: int) -> str | None:
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
    times = _event_times(contract, table)
    order = pa.array(_order(contract, table, times))
    ordered = table.take(order)
    micros = None if times is None else times.take(order).cast(pa.int64()).to_numpy()
    cut = n - n_holdout
    train = ordered.slice(0, cut)
    holdout = ordered.slice(cut)
    dropped = 0
    if max_train_rows is not None and train.num_rows > max_train_rows:
        dropped = train.num_rows - max_train_rows
        train = train.slice(dropped)
    t_train = None if micros is None else micros[dropped:cut]
    t_holdout = None if micros is None else micros[cut:]
    y_train = _labels(contract, train)
    y_holdout = _labels(contract, holdout)
    if contract.task == "classification" and len(set(y_train.tolist())) < 2:
        raise TrainingDataError("the training rows hold a single class")
    return Split(
        x_train=table_to_frame(contract, train),
        y_train=y_train,
        x_holdout=table_to_frame(contract, holdout),
        y_holdout=y_holdout,
        holdout=_describe(contract, table, train, holdout, (t_train, t_holdout), holdout_fraction)
        | {"train_rows_dropped": dropped},
        t_train=t_train,
    )


def _describe(
    contract: Contract,
    table: pa.Table,
    train: pa.Table,
    holdout: pa.Table,
    times: tuple[np.ndarray | None, np.ndarray | None],
    fraction: float,
) -> dict[str, Any]:
    """How the holdout was chosen, in words and figures, and whether it is future data
    (every holdout row strictly later than every training row)."""
    t_train, t_holdout = times
    time_col = contract.event_time if t_train is not None else None
    id_col = contract.id if contract.id in table.column_names else None
    words = f"the latest {fraction:.0%} of rows by {time_col or 'row order'}" + (
        f", ties broken by {id_col}" if id_col else ""
    )
    future = False
    if t_train is None or t_holdout is None:
        why = (
            f"the contract has no event time, so the holdout is the latest {id_col or 'rows'}"
            if contract.event_time is None
            else f"the data has no {contract.event_time!r} column"
        )
    elif int(t_train[0]) == int(t_holdout[-1]):
        why = (
            f"every row shares the event time {_iso(t_holdout, 0)}, so the holdout is the"
            f" latest {id_col or 'rows'} within it"
        )
    elif int(t_holdout[0]) <= int(t_train[-1]):
        why = (
            f"the training rows reach the holdout's first event time {_iso(t_holdout, 0)},"
            f" so the holdout starts with the latest {id_col or 'rows'} within it"
        )
    else:
        future = True
        why = ""
    if not future:
        words += f"; it is not future data: {why}"
    return {
        "method": "time-ordered",
        "description": words,
        "future": future,
        "fraction": fraction,
        "rows": holdout.num_rows,
        "train_rows": train.num_rows,
        "event_time_column": time_col,
        "first_event_time": _iso(t_holdout, 0),
        "last_event_time": _iso(t_holdout, -1),
        "train_first_event_time": _iso(t_train, 0),
        "train_last_event_time": _iso(t_train, -1),
        "first_id": _text(holdout, id_col, 0),
        "last_id": _text(holdout, id_col, holdout.num_rows - 1),
    }


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
