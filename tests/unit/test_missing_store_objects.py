"""Events naming store objects the store does not hold are skipped, counted and acked.

A broker that outlives its artifact store replays such events; each core must answer
them without a failure, a crash or a stall (the integrated version with five services
is tests/reliability/test_new_store.py).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from services.training.metrics import TrainingMetrics
from services.validation.core import Validator
from services.validation.metrics import ValidationMetrics
from shared.datasets import DatasetCatalog
from shared.events import BatchCreated, DatasetValidated
from shared.registry import Registry
from shared.store import ArtifactStore
from tests.unit.test_training_core import FAST, Recorder
from tests.unit.test_training_data import toy_contract
from tests.unit.test_validation_core import CONTRACT, batch_of, table


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(f"file://{tmp_path}/new-store")


@pytest.mark.parametrize(
    "uri",
    [
        "file:///var/lib/old-store/raw/toy/b-old.parquet",  # another store's object
        "raw/toy/never-written.parquet",  # this store, but not there (a restored store)
    ],
)
def test_validation_skips_and_counts_a_batch_the_store_does_not_hold(
    store: ArtifactStore, uri: str
) -> None:
    registry = CollectorRegistry()
    validator = Validator({"toy": CONTRACT}, store, ValidationMetrics(registry))
    stale = BatchCreated(dataset="toy", batch_id="b-old", uri=uri, rows=10, sha256="0" * 64)
    assert validator.handle(stale) is None
    counted = registry.get_sample_value(
        "flywheel_validation_invalid_messages_total",
        {"dataset": "toy", "reason": "missing_batch"},
    )
    assert counted == 1
    assert not store.list("validation"), "no outcome stored: a restored object is validated"
    # ... and a batch the store does hold is validated as usual.
    fresh = validator.handle(batch_of(store, table(200)))
    assert isinstance(fresh, DatasetValidated)


async def test_training_skips_and_counts_a_dataset_version_the_catalog_lacks(
    store: ArtifactStore,
) -> None:
    from services.training.core import TrainingCore

    contract = toy_contract()
    registry = CollectorRegistry()
    core = TrainingCore(
        {contract.name: contract},
        Registry(store),
        DatasetCatalog(store),
        Recorder(),
        TrainingMetrics(registry),
        FAST,
    )
    acked: list[str] = []
    event = DatasetValidated(
        dataset=contract.name,
        dataset_version="dv-old",
        rows=2000,
        new_rows=2000,
        batch_ids=["b-old"],
        report_uri="file:///old/report.json",
    )
    assert core.submit_validated(event, lambda: acked.append("dv-old")) is False
    assert acked == ["dv-old"], "acked at once: its offset is committed"
    assert not core.pending, "nothing queued: no run can fail on it"
    counted = registry.get_sample_value(
        "flywheel_training_missing_objects_total",
        {"model": contract.name, "kind": "dataset_version"},
    )
    assert counted == 1


def test_holds_is_true_only_for_an_object_of_this_store_that_exists(
    store: ArtifactStore,
) -> None:
    validator = Validator({"toy": CONTRACT}, store, ValidationMetrics(CollectorRegistry()))
    _sha, uri = store.put_parquet("raw/toy", pa.table({"x": [1.0]}))
    assert validator.holds(uri)
    assert not validator.holds(uri.replace("new-store", "old-store"))
    assert not validator.holds(uri.replace(".parquet", "-gone.parquet"))


def test_monitoring_skips_and_counts_events_naming_a_version_the_registry_lacks(
    store: ArtifactStore,
) -> None:
    from shared.contract import load_contract
    from shared.events import Deployment, ModelRegistered
    from tests.conftest import CONTRACTS
    from tests.unit.test_monitoring import Clock, _core

    contract = load_contract(CONTRACTS / "car_loan.yaml")
    core, registry = _core(store, contract, Clock())
    core.on_deployment(
        Deployment(model=contract.name, action="promote", version=7, reason="old store")
    )
    core.on_registered(
        ModelRegistered(model=contract.name, version=7, dataset_version="dv-old", manifest_uri="x")
    )
    state = core.model(contract.name)
    assert state is not None
    assert state.champion is None, "a version the registry lacks is not followed"
    for topic in ("models.deployments", "models.registered"):
        counted = registry.get_sample_value(
            "flywheel_monitoring_rejected_total",
            {"topic": topic, "reason": "missing_model_version"},
        )
        assert counted == 1, topic
