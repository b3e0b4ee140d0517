"""Validation rules: one batch table + the contract (+ a reference profile) -> rule results.

Row rules mark individual rows (a row failing any of them is excluded from the dataset):
``not_null:<feature>``, ``range:<feature>``, ``allowed_values:<feature>``,
``label_values`` and ``duplicate_id``. Batch rules judge the batch as a whole:
``schema`` (a missing or uncastable column), ``row_failure_rate`` (share of failing
rows above ``validation.max_row_failure_rate``), ``outliers:<feature>`` (share of values
beyond the reference's robust range above ``validation.max_outlier_share``) and
``label_balance`` (a class below ``validation.min_label_share``; a warning, since small
batches are legitimately lopsided). Everything is vectorised with pyarrow/numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shared.contract import Contract
from shared.drift import Profile
from shared.features import MISSING_CATEGORY

Severity = Literal["error", "warning"]

LABEL_BALANCE_MIN_ROWS = 100
"""Batches smaller than this are not judged on label balance."""


@dataclass
class RuleResult:
    """The outcome of one rule on one batch."""

    rule: str
    kind: Literal["row", "batch"]
    failed: int
    """Rows failing (row rules) or values concerned (batch rules)."""
    share: float
    passed: bool
    severity: Severity = "error"
    detail: str = ""
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Row rules: which rows failed (written to the rejected-rows record)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the report."""
        return {
            "rule": self.rule,
            "kind": self.kind,
            "failed": self.failed,
            "share": self.share,
            "passed": self.passed,
            "severity": self.severity,
            "detail": self.detail,
        }


@dataclass
class RuleOutcome:
    """Every rule's result plus which rows pass all row rules."""

    rules: list[RuleResult]
    keep: np.ndarray
    """Boolean mask of rows passing every row rule."""
    table: pa.Table | None
    """The batch cast to the contract's types (None when the schema is broken)."""
    failing_rows: int = 0
    errors: list[str] = field(default_factory=list)
    """Names of failed error-severity rules (the quarantine reasons)."""


def expected_types(contract: Contract) -> dict[str, pa.DataType]:
    """Column name -> Arrow type the contract requires of a batch."""
    types: dict[str, pa.DataType] = {contract.id: pa.string()}
    for f in contract.features:
        types[f.name] = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}.get(
            f.type, pa.string()
        )
    classes = contract.label.classes
    if classes is not None:
        types[contract.label.name] = (
            pa.string() if any(isinstance(c, str) for c in classes) else pa.int64()
        )
    else:
        types[contract.label.name] = pa.float64()
    return types


def conform(contract: Contract, table: pa.Table) -> tuple[pa.Table | None, list[str]]:
    """``table`` with the contract's columns cast to their types, or None and the problems."""
    problems: list[str] = []
    cols: dict[str, pa.ChunkedArray] = {}
    for name, typ in expected_types(contract).items():
        if name not in table.column_names:
            problems.append(f"column {name!r} is missing")
            continue
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        try:
            cols[name] = col if col.type == typ else col.cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            problems.append(f"column {name!r} ({col.type}) cannot be read as {typ}: {err}")
    if problems:
        return None, problems
    rest = [c for c in table.column_names if c not in cols]
    return pa.table({**cols, **{c: table.column(c) for c in rest}}), []


def _mask(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _row_rule(name: str, bad: np.ndarray, rows: int, detail: str) -> RuleResult:
    failed = int(bad.sum())
    return RuleResult(
        name, "row", failed, failed / rows if rows else 0.0, failed == 0, detail=detail, mask=bad
    )


def evaluate(contract: Contract, table: pa.Table, reference: Profile | None) -> RuleOutcome:
    """Run every rule on ``table``.

    Args:
        contract: the dataset's contract (types, ranges, vocabularies, policy).
        table: the raw batch.
        reference: the current dataset version's profile (None for the first batch).
    """
    pol = contract.validation
    rows = table.num_rows
    cast, problems = conform(contract, table)
    if cast is None:
        schema = RuleResult("schema", "batch", rows, 1.0, False, detail="; ".join(problems))
        return RuleOutcome([schema], np.zeros(rows, dtype=bool), None, rows, ["schema"])
    results = [RuleResult("schema", "batch", 0, 0.0, True)]
    failing = np.zeros(rows, dtype=bool)

    for f in contract.features:
        col = cast.column(f.name)
        null = _mask(col.is_null(nan_is_null=True)) if f.is_numeric else _mask(col.is_null())
        if not f.nullable:
            results.append(_row_rule(f"not_null:{f.name}", null, rows, "null or NaN"))
            failing |= null
        if f.type in ("float", "int") and (f.min is not None or f.max is not None):
            out = np.zeros(rows, dtype=bool)
            if f.min is not None:
                out |= _mask(pc.less(col, f.min))
            if f.max is not None:
                out |= _mask(pc.greater(col, f.max))
            results.append(_row_rule(f"range:{f.name}", out, rows, f"outside [{f.min}, {f.max}]"))
            failing |= out
        if f.type == "category":
            allowed = pa.array(f.values or [], pa.string())
            out = ~_mask(pc.is_in(col, value_set=allowed)) & ~null
            shown = ", ".join((f.values or [])[:10])
            results.append(_row_rule(f"allowed_values:{f.name}", out, rows, f"not in [{shown}]"))
            failing |= out

    label = cast.column(contract.label.name)
    if contract.label.classes is not None:
        classes = pa.array(contract.label.classes, label.type)
        bad_label = ~_mask(pc.is_in(label, value_set=classes))
        detail = f"not in {contract.label.classes}"
    else:
        bad_label = _mask(label.is_null(nan_is_null=True))
        detail = "null or NaN"
    results.append(_row_rule("label_values", bad_label, rows, detail))
    failing |= bad_label

    ids = pd.Series(cast.column(contract.id).to_numpy(zero_copy_only=False))
    dup = ids.duplicated(keep="first").to_numpy()
    results.append(_row_rule("duplicate_id", dup, rows, "id seen earlier in the batch"))
    failing |= dup

    n_failing = int(failing.sum())
    rate = n_failing / rows if rows else 0.0
    results.append(
        RuleResult(
            "row_failure_rate",
            "batch",
            n_failing,
            rate,
            rate <= pol.max_row_failure_rate,
            detail=f"limit {pol.max_row_failure_rate}",
        )
    )
    if reference is not None:
        results += _outliers(contract, cast, reference, rows)
    if contract.label.classes is not None:
        results.append(_label_balance(contract, label, rows))
    errors = [r.rule for r in results if not r.passed and r.severity == "error"]
    # Row rules are judged together by row_failure_rate; alone they only exclude rows.
    errors = [e for e in errors if _is_batch_rule(results, e)]
    if "row_failure_rate" in errors:
        errors += [r.rule for r in results if r.kind == "row" and not r.passed]
    return RuleOutcome(results, ~failing, cast, n_failing, errors)


def _is_batch_rule(results: list[RuleResult], name: str) -> bool:
    return any(r.rule == name and r.kind == "batch" for r in results)


def _outliers(contract: Contract, table: pa.Table, ref: Profile, rows: int) -> list[RuleResult]:
    limit = contract.validation.max_outlier_share
    out: list[RuleResult] = []
    for f in contract.features:
        num = ref.numeric.get(f.name)
        if num is None or f.type == "bool":
            continue
        values = np.asarray(
            table.column(f.name).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float
        )
        finite = values[~np.isnan(values)]
        n = int(((finite < num.low) | (finite > num.high)).sum())
        share = n / finite.size if finite.size else 0.0
        out.append(
            RuleResult(
                f"outliers:{f.name}",
                "batch",
                n,
                share,
                share <= limit,
                detail=f"beyond the reference's robust range [{num.low:.4g}, {num.high:.4g}]; "
                f"limit {limit}",
            )
        )
    return out


def _label_balance(contract: Contract, label: pa.ChunkedArray, rows: int) -> RuleResult:
    min_share = contract.validation.min_label_share
    counts = {str(c): 0 for c in contract.label.classes or []}
    values, ns = np.unique(label.drop_null().to_numpy(zero_copy_only=False), return_counts=True)
    for v, n in zip(values, ns, strict=True):
        counts[str(v)] = counts.get(str(v), 0) + int(n)
    total = sum(counts.values())
    shares = {k: round(n / total, 4) for k, n in counts.items()} if total else {}
    low = {k: s for k, s in shares.items() if s < min_share}
    judged = rows >= LABEL_BALANCE_MIN_ROWS
    detail = f"class shares {shares}; minimum {min_share}"
    if not judged:
        detail += f"; not judged under {LABEL_BALANCE_MIN_ROWS} rows"
    return RuleResult(
        "label_balance",
        "batch",
        len(low),
        min(low.values()) if low else 0.0,
        not (judged and low),
        severity="warning",
        detail=detail,
    )


def profile_frame(contract: Contract, table: pa.Table) -> pd.DataFrame:
    """A model-ready frame (as :func:`shared.features.to_frame` makes) built vectorised."""
    data: dict[str, np.ndarray] = {}
    for f in contract.features:
        col = table.column(f.name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if f.is_numeric:
            data[f.name] = np.asarray(
                col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
            )
        else:
            filled = pc.fill_null(col.cast(pa.string()), MISSING_CATEGORY)
            data[f.name] = np.asarray(filled.to_numpy(zero_copy_only=False), dtype=object)
    return pd.DataFrame(data, columns=contract.feature_names)
