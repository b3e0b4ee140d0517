"""``reproduce`` retrains from the contract snapshot kept with the manifest."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.training.reproduce import reproduce
from shared.datasets import DatasetCatalog
from shared.registry import Registry, TamperedArtifactError
from shared.store import ArtifactStore
from tests.unit.test_training_data import add_dataset, toy_contract, toy_table
from tests.unit.test_training_retries import make_core, validated


def test_reproduce_uses_the_snapshot_and_reports_every_difference(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    version = add_dataset(store, "toy", [toy_table(1500)])
    core, _, _ = make_core(store, toy_contract())
    core.submit_validated(validated(version.id, 1500, 1500), lambda: None)
    assert asyncio.run(core.run("toy")).outcome == "promoted"
    registry, catalog = Registry(store), DatasetCatalog(store)
    manifest = registry.get("toy", 1)
    assert manifest.contract_sha256 is not None
    assert registry.contract_snapshot(manifest) == toy_contract().model_dump(mode="json")

    # Today's contract moved on: a different holdout would change the model, a new
    # feature would change its inputs; the snapshot still reproduces v1 exactly.
    today = toy_contract(training={"holdout_fraction": 0.3})
    body = today.model_dump(mode="json")
    body["features"][0]["max"] = 9.0
    body["features"].append({"name": "extra", "type": "float"})
    changed = type(today).model_validate(body)
    result = reproduce(changed, registry, catalog, 1, threads=1)
    assert result.passed, result.problems
    assert result.contract_source == "snapshot"
    assert result.max_abs_diff == 0.0
    assert result.contract_differences == {
        "training.holdout_fraction": [0.2, 0.3],
        "features.x.max": [None, 9.0],
        "features.extra": [None, changed.model_dump(mode="json")["features"][-1]],
    }
    assert result.code_difference is None  # the same checkout
    # No contract file at hand: the snapshot alone is enough.
    assert reproduce("toy", registry, catalog, 1, threads=1).passed

    path = Path(store.root) / store.key_for(manifest.contract_uri or "")
    path.chmod(0o644)
    path.write_text(path.read_text().replace('"min_rows":500', '"min_rows":501'))
    with pytest.raises(TamperedArtifactError, match="contract snapshot"):
        reproduce("toy", registry, catalog, 1, threads=1)
