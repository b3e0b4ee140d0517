"""Reproducibility: retrain a registered version from its manifest and compare predictions.

The manifest records the dataset version, estimator family, params, seed and the run
knobs (row cap, test hooks); the same split and fit are repeated, the new pipeline is
exported, and both ONNX models are run on the holdout. Labels must be equal on every
row and values within a tolerance, or the reproduction fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shared.contract import Contract
from shared.datasets import DatasetCatalog
from shared.features import to_onnx
from shared.registry import Registry
from shared.store import sha256_hex

from .parity import compare, onnx_predictions
from .trainer import TrainConfig, cpu_threads, fit, library_versions, prepare


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

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``flywheel reproduce --json``)."""
        return asdict(self)


def reproduce(
    contract: Contract,
    registry: Registry,
    catalog: DatasetCatalog,
    version: int,
    *,
    tolerance: float = 1e-9,
    threads: int | None = None,
) -> Reproduction:
    """Retrain ``version`` of ``contract``'s model and compare it with the registered one.

    ``threads`` limits OpenMP/BLAS threads (None: the libraries' default).
    Raises :class:`~shared.registry.TamperedArtifactError` if the manifest or ONNX was
    altered after registration, KeyError for an unknown version or dataset version.
    """
    with cpu_threads(threads):
        return _reproduce(contract, registry, catalog, version, tolerance)


def _reproduce(
    contract: Contract, registry: Registry, catalog: DatasetCatalog, version: int, tolerance: float
) -> Reproduction:
    manifest = registry.verify(contract.name, version)
    extra = manifest.model_extra or {}
    problems: list[str] = []
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
    fresh_onnx = to_onnx(pipeline, contract)
    x = prepared.data.x_holdout
    registered = onnx_predictions(contract, registry.onnx_bytes(manifest), x)
    fresh = onnx_predictions(contract, fresh_onnx, x)
    parity = compare(contract, registered, fresh, tolerance)
    if not parity.passed:
        problems.append(
            f"predictions differ: labels agree on {parity.label_agreement:.4%} of rows, "
            f"max difference {parity.max_abs_diff:.3g} (tolerance {tolerance:g})"
        )
    now = library_versions()
    differences = {
        name: [was, now.get(name, "missing")]
        for name, was in manifest.library_versions.items()
        if now.get(name, "missing") != was
    }
    return Reproduction(
        model=contract.name,
        version=version,
        passed=not problems,
        rows=parity.rows,
        label_agreement=parity.label_agreement,
        max_abs_diff=parity.max_abs_diff,
        tolerance=tolerance,
        onnx_identical=sha256_hex(fresh_onnx) == manifest.onnx_sha256,
        problems=problems,
        library_differences=differences,
    )
