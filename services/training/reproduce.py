"""Reproducibility: retrain a registered version from its manifest and compare predictions.

The manifest records the dataset version, estimator family, params, seed and the run
knobs (row cap, test hooks); the same split and fit are repeated, the new pipeline is
exported, and both ONNX models are run on the holdout. Labels must be equal on every
row and values within a tolerance, or the reproduction fails.

The contract is the snapshot stored with the manifest (checked against its sha256), not
today's file: a reproduction reports how today's contract, code and library versions
differ from the ones the version was trained with, and fails only on what changes the
model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shared.contract import Contract, parse_contract
from shared.datasets import DatasetCatalog
from shared.registry import Registry
from shared.store import sha256_hex

from .cpu import cpu_threads
from .export import export
from .parity import compare
from .runtime import onnx_predictions
from .trainer import (
    TrainConfig,
    code_version,
    contract_snapshot,
    fit,
    library_versions,
    prepare,
)


@dataclass
class Reproduction:
    """The outcome of one reproduction."""

    model: str
    version: int
    passed: bool
    rows: int
    label_agreement: float
    max_abs_diff: float
    tolerance: float
    onnx_identical: bool
    problems: list[str] = field(default_factory=list)
    library_differences: dict[str, list[str]] = field(default_factory=dict)
    contract_source: str = "snapshot"
    """``snapshot`` (the contract stored with the manifest) or ``today`` (an older
    version registered without one: today's contract file was used)."""
    contract_differences: dict[str, list[Any]] = field(default_factory=dict)
    """Field path -> [at training, today] between the snapshot and today's contract."""
    code_difference: list[str] | None = None
    """[at training, now] when the code version differs."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``flywheel reproduce --json``)."""
        return asdict(self)


def reproduce(
    contract: Contract | str,
    registry: Registry,
    catalog: DatasetCatalog,
    version: int,
    *,
    tolerance: float = 1e-9,
    threads: int | None = None,
) -> Reproduction:
    """Retrain ``version`` of ``contract``'s model and compare it with the registered one.

    ``contract`` is today's contract (compared with the stored snapshot), or just the
    model's name when no contract file is at hand.

    ``threads`` limits OpenMP/BLAS threads (None: the libraries' default).
    Raises :class:`~shared.registry.TamperedArtifactError` if the manifest or ONNX was
    altered after registration, KeyError for an unknown version or dataset version.
    """
    with cpu_threads(threads):
        return _reproduce(contract, registry, catalog, version, tolerance)


def _reproduce(
    today: Contract | str,
    registry: Registry,
    catalog: DatasetCatalog,
    version: int,
    tolerance: float,
) -> Reproduction:
    name = today if isinstance(today, str) else today.name
    manifest = registry.verify(name, version)
    extra = manifest.model_extra or {}
    problems: list[str] = []
    snapshot = registry.contract_snapshot(manifest)
    differences: dict[str, list[Any]] = {}
    if snapshot is not None:
        contract = parse_contract(snapshot, f"{name} v{version}'s contract snapshot")
        if not isinstance(today, str):
            differences = _differences(snapshot, contract_snapshot(today))
    elif isinstance(today, str):
        raise KeyError(f"{name} v{version} has no contract snapshot; pass today's contract")
    else:
        contract = today
    if manifest.features != contract.feature_names:
        problems.append(
            f"the contract's features {contract.feature_names} differ from the manifest's "
            f"{manifest.features}"
        )
    config = TrainConfig(**extra.get("training_config", {}))
    prepared = prepare(contract, catalog, manifest.dataset_version, config)
    holdout = prepared.data.holdout
    recorded = extra.get("holdout", {})
    for key in ("rows", "first_id", "last_id", "train_rows"):
        if key in recorded and recorded[key] != holdout[key]:
            problems.append(f"holdout {key}: {holdout[key]} now, {recorded[key]} registered")
    pipeline = fit(contract, manifest.estimator, dict(manifest.params), manifest.seed, prepared)
    fresh_onnx = export(pipeline, contract)
    x = prepared.data.x_holdout
    registered = onnx_predictions(contract, registry.onnx_bytes(manifest), x)
    fresh = onnx_predictions(contract, fresh_onnx, x)
    parity = compare(contract, registered, fresh, tolerance)
    if not parity.passed:
        problems.append(
            f"predictions differ: labels agree on {parity.label_agreement:.4%} of rows, "
            f"max difference {parity.max_abs_diff:.3g} (tolerance {tolerance:g})"
        )
    code_now = code_version()
    now = library_versions()
    libraries = {
        lib: [was, now.get(lib, "missing")]
        for lib, was in manifest.library_versions.items()
        if now.get(lib, "missing") != was
    }
    return Reproduction(
        model=name,
        version=version,
        passed=not problems,
        rows=parity.rows,
        label_agreement=parity.label_agreement,
        max_abs_diff=parity.max_abs_diff,
        tolerance=tolerance,
        onnx_identical=sha256_hex(fresh_onnx) == manifest.onnx_sha256,
        problems=problems,
        library_differences=libraries,
        contract_source="snapshot" if snapshot is not None else "today",
        contract_differences=differences,
        code_difference=None
        if code_now == manifest.code_version
        else [manifest.code_version, code_now],
    )


def _differences(was: Any, now: Any, path: str = "") -> dict[str, list[Any]]:
    """Leaf paths where two JSON values differ (lists of named items by name)."""
    if isinstance(was, list) and isinstance(now, list) and _named(was) and _named(now):
        was = {item["name"]: item for item in was}
        now = {item["name"]: item for item in now}
    if isinstance(was, dict) and isinstance(now, dict):
        out: dict[str, list[Any]] = {}
        for key in [*was, *(k for k in now if k not in was)]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in was or key not in now:
                out[sub] = [was.get(key), now.get(key)]
            else:
                out.update(_differences(was[key], now[key], sub))
        return out
    return {} if was == now else {path: [was, now]}


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)
