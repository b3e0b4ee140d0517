"""The model card: a registered version's manifest in plain words."""

from __future__ import annotations

from typing import Any

from shared.contract import Contract
from shared.registry import ModelManifest

from . import evaluation
from .fast_first import FAST_FIRST


def model_card(contract: Contract, m: ModelManifest) -> list[str]:
    """The model card in plain words."""
    extra = m.model_extra or {}
    metric = contract.promotion.primary_metric
    holdout = extra["holdout"]
    lines = [
        f"{m.model} v{m.version}: {extra['chosen']}, trained because {m.reason}.",
        f"Data: dataset version {m.dataset_version[:12]} ({extra['dataset_rows']} rows); "
        f"{holdout['train_rows']} training rows, holdout = {holdout['description']} "
        f"({holdout['rows']} rows).",
    ]
    if extra.get("candidate") == FAST_FIRST:
        lines.append(
            f"Fast first candidate, not searched: {extra['candidate_reason']}. The searched "
            "model of the same run follows as the next version."
        )
    else:
        lines.append(_search(m, metric))
    if extra.get("fast_first_version") is not None:
        lines.append(
            f"Follows the fast first candidate v{extra['fast_first_version']} of the same run, "
            "on the same dataset version."
        )
    lines.append(
        "Holdout: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.metrics.items())) + "."
    )
    trivial = extra["trivial_baseline"]["metrics"]
    lines.append(
        f"Trivial baseline ({extra['trivial_baseline']['description']}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in sorted(trivial.items()))
        + "."
    )
    base = extra.get("interpretable_baseline")
    if base:
        top = ", ".join(f"{t['input']} {t['weight']:+.2f}" for t in base["top"][:5])
        lines.append(
            f"Interpretable baseline (logistic/linear, C=1): {metric} "
            f"{base['metrics'].get(metric, float('nan')):.4f}; largest weights: {top}."
        )
    champion = extra.get("champion")
    if champion:
        lines.append(
            f"Champion v{champion['version']} on the same holdout: {metric} "
            f"{champion['metrics'].get(metric, float('nan')):.4f}."
        )
    if extra.get("feature_importance"):
        importance = ", ".join(
            f"{r['feature']} {r['mean']:.4f}" for r in extra["feature_importance"][:5]
        )
        lines.append(
            f"Most important features (permutation on the holdout, "
            f"{evaluation.importance_metric(contract)} lost when shuffled): {importance}."
        )
    lines += _groups(contract, m)
    failed = [f"{name} ({g.detail})" for name, g in m.gates.items() if not g.passed]
    lines.append("Gates: all passed." if not failed else "Gates failed: " + "; ".join(failed) + ".")
    action = extra.get("deployment")
    lines.append(
        f"Deployment: {action} (strategy {contract.promotion.strategy})."
        if action
        else f"Deployment: none (strategy {contract.promotion.strategy}"
        + (", failed gates)." if failed else ", waiting for `flywheel promote`).")
    )
    if extra.get("corrupted_labels"):
        lines.append(
            f"Test hook: {extra['corrupted_labels']} training labels were deliberately flipped."
        )
    return lines


def _search(m: ModelManifest, metric: str) -> str:
    extra: dict[str, Any] = m.model_extra or {}
    search = extra["search"]
    train_rows = extra["holdout"]["train_rows"]
    return (
        f"Search: {extra['runs_tried']} candidates (seed {m.seed}) cross-validated on "
        f"{search.get('sample') or 'the training rows'}"
        + (f" ({search['folds']})" if search.get("folds") else "")
        + f", {metric} "
        f"{extra['cv_score']['mean']:.4f} ± {extra['cv_score']['std']:.4f} for the chosen "
        f"one, then refit on all {train_rows} training rows"
        + (
            f"; the {search['budget_s']:g} s budget left out {len(search['not_run'])} grid points."
            if search["not_run"]
            else "."
        )
    )


def _groups(contract: Contract, m: ModelManifest) -> list[str]:
    lines = []
    for attribute, entry in m.group_metrics.items():
        parts = []
        for value, g in entry["groups"].items():
            if g["small"]:
                continue
            rates = ", ".join(
                f"{k} {g[k]:.4g}" if k == "mae" else f"{k} {g[k]:.3f}"
                for k in evaluation.group_figures(g)
            )
            parts.append(f"{attribute}={value} ({g['rows']} rows): {rates}")
        gaps = ", ".join(f"{k} {v:.3f}" for k, v in entry["gaps"].items())
        lines.append(
            f"By {attribute}: " + "; ".join(parts) + f". Largest gaps: {gaps or 'n/a'}"
            f" ({evaluation.gap_measure(contract, entry)})."
        )
    return lines
