"""Cross-validation folds that respect time: train on the past, validate on the future.

When the training rows carry event times the search validates each candidate on
blocked, expanding-window folds, as scikit-learn's ``TimeSeriesSplit`` does: the rows
in time order are cut into ``folds + 1`` blocks, and fold ``k`` trains on the blocks
before block ``k + 1`` and validates on it. Unlike ``TimeSeriesSplit`` a cut never
falls inside one event time: it moves forward to the next time, so every validation
row is strictly later than every row the fold trained on (rows sharing a time are
never split between the past and the future).

Time folds are not always possible. With every row at one event time there is no
future to validate on; a classification fold whose training rows or validation rows
miss a class cannot be scored by every metric. Then :func:`time_folds` says why, and
the search falls back to shuffled (stratified) folds and records that reason.
"""

from __future__ import annotations

import numpy as np

Splits = list[tuple[np.ndarray, np.ndarray]]
"""(training positions, validation positions) per fold."""


def time_folds(
    times: np.ndarray, y: np.ndarray, *, folds: int, classification: bool
) -> tuple[Splits | None, str]:
    """Blocked expanding-window folds over ``times``, or None and why they cannot be used.

    Args:
        times: event time of each row (any orderable numbers, e.g. epoch microseconds);
            the rows need not be sorted.
        y: the rows' labels.
        folds: the number of folds wanted.
        classification: require every class in every fold's training and validation rows.

    Returns:
        The splits (positions into the rows) and a description, or None and the reason
        time-ordered folds cannot be used.
    """
    n = len(times)
    order = np.argsort(times, kind="stable")
    ordered = np.asarray(times)[order]
    block = n // (folds + 1)
    if block < 1 or ordered[0] == ordered[-1]:
        return None, "every training row shares one event time, so no fold can be future data"
    splits: Splits = []
    classes = np.unique(y) if classification else None
    for k in range(folds):
        start = n - (folds - k) * block
        end = n - (folds - k - 1) * block
        # Move the cut past the rows that share the last training row's time.
        start = int(np.searchsorted(ordered, ordered[start - 1], side="right"))
        if start >= end:
            continue
        train, test = order[:start], order[start:end]
        if classes is not None:
            for part, rows in (("training", train), ("validation", test)):
                if len(np.unique(y[rows])) < len(classes):
                    return None, (
                        f"a time-ordered fold's {part} rows miss a class, so it could not be scored"
                    )
        splits.append((np.sort(train), np.sort(test)))
    if len(splits) < 2:
        return None, "the event times allow fewer than two time-ordered folds"
    return splits, (
        f"{len(splits)} time-ordered folds (expanding window: each trains on earlier event"
        " times and validates on strictly later ones)"
    )
