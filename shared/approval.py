"""Whether a registered version may serve: one rule, applied by training when it
records a decision and again by serving before it loads one.

A version may serve (as champion, canary or shadow) only when

- its sklearn/ONNX parity check passed (never overridable: the served model would not
  be the one that was evaluated);
- every other gate it failed (``fairness_gap``, ``beats_champion``, ...) was overridden
  by name in an approval recorded in the registry history;
- under the ``manual`` strategy, an approval of it is recorded at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.registry import AliasChange, ModelManifest

NEVER_OVERRIDDEN = frozenset({"parity"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a version may not serve: a metric label and a sentence."""

    reason: str
    """``parity``, ``gates`` or ``approval``."""
    message: str


def overridden(approvals: list[AliasChange]) -> set[str]:
    """Every gate some approval of the version overrides."""
    return {str(g) for a in approvals for g in a.detail.get("overrides", [])}


def refusal(manifest: ModelManifest, approvals: list[AliasChange], strategy: str) -> Refusal | None:
    """Why ``manifest``'s version may not serve (None: it may).

    Args:
        manifest: the version's manifest.
        approvals: the approvals recorded for this version (``Registry.approvals``).
        strategy: the contract's promotion strategy (``manual``, ``direct``, ...).
    """
    name = f"{manifest.model} v{manifest.version}"
    if not manifest.parity.passed:
        return Refusal("parity", f"{name} failed the ONNX parity gate: it never serves")
    accepted = overridden(approvals)
    missing = sorted(
        g for g, gate in manifest.gates.items() if not gate.passed and g not in accepted
    )
    if missing:
        return Refusal(
            "gates",
            f"{name} failed {', '.join(missing)}; it serves only after "
            f"`flywheel approve {manifest.model} {manifest.version} "
            + " ".join(f"--override {g}" for g in missing)
            + " --reason ...`",
        )
    if strategy == "manual" and not approvals:
        return Refusal(
            "approval",
            f"{name} has no recorded approval (strategy manual): "
            f"`flywheel approve {manifest.model} {manifest.version} --reason ...` first",
        )
    return None


def override_problem(manifest: ModelManifest, overrides: list[str]) -> str | None:
    """Why ``overrides`` cannot be recorded for this version (None: they can)."""
    for gate in overrides:
        if gate in NEVER_OVERRIDDEN:
            return f"the {gate} gate can never be overridden"
        if gate not in manifest.gates:
            return (
                f"{manifest.model} v{manifest.version} has no gate {gate!r} (gates: "
                + (", ".join(sorted(manifest.gates)) or "none")
                + ")"
            )
        if manifest.gates[gate].passed:
            return f"{manifest.model} v{manifest.version} passed {gate}: nothing to override"
    return None
