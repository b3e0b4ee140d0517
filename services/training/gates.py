"""Promotion gates: what a new model must pass before it is deployed."""

from __future__ import annotations

from typing import Any

from shared.contract import Contract
from shared.registry import Gate, Parity

from .evaluation import fairness_gap
from .scoring import IN_LABEL_UNITS, improvement, relative_improvement


def evaluate_gates(
    contract: Contract,
    *,
    parity: Parity,
    metrics: dict[str, float],
    group_metrics: dict[str, Any],
    baseline_metrics: dict[str, float],
    champion_metrics: dict[str, float] | None,
    champion_group_metrics: dict[str, Any] | None,
) -> dict[str, Gate]:
    """Every gate's outcome, in words.

    Args:
        contract: the contract (its ``promotion`` policy holds the limits).
        parity: the sklearn/ONNX parity result.
        metrics: the new model's holdout metrics.
        group_metrics: the new model's per-group metrics.
        baseline_metrics: the trivial baseline's holdout metrics.
        champion_metrics: the champion's metrics on the same holdout (None: no champion).
        champion_group_metrics: the champion's per-group metrics on the same holdout.
    """
    policy = contract.promotion
    metric = policy.primary_metric
    gates: dict[str, Gate] = {
        "parity": Gate(
            passed=parity.passed,
            detail=(
                f"labels agree on {parity.label_agreement:.4%} of {parity.rows} holdout rows; "
                f"max |sklearn - onnxruntime| = {parity.max_abs_diff:.3g}, bound "
                f"{parity.tolerance:g} + {parity.rtol:g} x {_relative_to(parity)}"
                f"{_worst_row(parity)}"
            ),
        )
    }
    value = metrics.get(metric)
    if value is None:
        gates["primary_metric"] = Gate(
            passed=False, detail=f"{metric} could not be computed on the holdout"
        )
        return gates
    if champion_metrics is None:
        base = baseline_metrics.get(metric, float("nan"))
        gain = improvement(metric, value, base)
        gates["beats_baseline"] = Gate(
            passed=bool(gain > 0),
            detail=f"{metric} {value:.4f} vs trivial baseline {base:.4f} (first model)",
        )
    else:
        champ = champion_metrics.get(metric, float("nan"))
        gain = improvement(metric, value, champ)
        gates["beats_champion"] = Gate(
            passed=bool(gain >= policy.min_improvement),
            detail=(
                f"{metric} {value:.4f} vs champion {champ:.4f} on the same holdout "
                f"(improvement {gain:+.4f}, needed {policy.min_improvement:+.4f})"
            ),
        )
    gap = fairness_gap(group_metrics)
    worst = _worst_gap(group_metrics)
    gates["fairness_gap"] = Gate(
        passed=bool(gap <= policy.max_fairness_gap),
        detail=f"largest gap between groups {gap:.4f}{worst} (limit {policy.max_fairness_gap})",
    )
    if champion_group_metrics is not None:
        drops = _group_drops(metric, group_metrics, champion_group_metrics)
        worst_drop = max(drops, key=lambda d: d[2], default=None)
        passed = worst_drop is None or worst_drop[2] <= policy.max_group_regression
        share = " (share of the champion's)" if metric in IN_LABEL_UNITS else ""
        detail = (
            "no group to compare"
            if worst_drop is None
            else f"largest {metric} drop versus the champion{share}: {worst_drop[2]:+.4f} on "
            f"{worst_drop[0]}={worst_drop[1]} (limit {policy.max_group_regression})"
        )
        gates["group_regression"] = Gate(passed=bool(passed), detail=detail)
    return gates


def _relative_to(parity: Parity) -> str:
    if parity.scale:
        return f"max(|sklearn|, {parity.scale:.4g} (RMS of the predictions))"
    return "|sklearn|"


def _worst_row(parity: Parity) -> str:
    row = parity.worst_row
    if not row:
        return ""
    where = f" of class {row['class']}" if "class" in row else ""
    return (
        f"; worst: holdout row {row['index']}{where}, sklearn {row['sklearn']:.6g} vs "
        f"onnxruntime {row['onnx']:.6g} ({row['ratio']:.2g} of its bound)"
    )


def _worst_gap(groups: dict[str, Any]) -> str:
    best: tuple[float, str, str] | None = None
    for attribute, entry in groups.items():
        for rate, gap in entry["gaps"].items():
            if best is None or gap > best[0]:
                best = (gap, attribute, rate)
    return "" if best is None else f" ({best[2]} across {best[1]})"


def _group_drops(
    metric: str, new: dict[str, Any], champion: dict[str, Any]
) -> list[tuple[str, str, float]]:
    drops = []
    for attribute, entry in new.items():
        old_groups = champion.get(attribute, {}).get("groups", {})
        for value, stats in entry["groups"].items():
            old = old_groups.get(value)
            if stats["small"] or old is None or metric not in stats or metric not in old:
                continue
            gain = relative_improvement(metric, stats[metric], old[metric])
            drops.append((attribute, value, -gain))
    return drops


def all_passed(gates: dict[str, Gate]) -> bool:
    """True when every gate passed."""
    return all(g.passed for g in gates.values())
