"""A broker that outlives its artifact store: events naming objects the store lacks.

A persistent broker keeps ``data.batches``, ``data.validated``, ``models.registered`` and
``models.deployments`` events whose batches, dataset versions and model versions a new
(or restored) store does not hold. Each service must skip such an event, count it and
commit past it, and then work on new data as usual. Here the five services start on a
fresh store, the stale events are published as the old store's services wrote them, and
then census data flows: it must be trained, promoted and served.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import structlog
import tritonclient.grpc as triton

from services.serving.testing import census_rows, feature_matrix
from shared import topics
from shared.cli.data import publish_events
from shared.contract import load_contract
from shared.events import BatchCreated, DatasetValidated, Deployment, Event, ModelRegistered
from shared.kafka import EventPublisher
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.signing import sign
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, DATA, DEPLOY_KEY, StartService
from tests.reliability.helpers import CENSUS, census_events, metric, report, wait_for

# slow (about 3 minutes on 2 busy cores): run by ``make test-reliability``, not ``make test``
pytestmark = [
    pytest.mark.reliability,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

FAST_TRAINING = {
    "FLYWHEEL_TRAINING_SEARCH_BUDGET_S": "2",
    "FLYWHEEL_TRAINING_CV_FOLDS": "2",
    "FLYWHEEL_TRAINING_IMPORTANCE_ROWS": "1000",
    "FLYWHEEL_TRAINING_IMPORTANCE_REPEATS": "1",
}


def small_census_contracts(tmp_path: Path) -> Path:
    """The census contract with training thresholds a 3000-row dataset passes."""
    folder = tmp_path / "contracts"
    folder.mkdir()
    text = (CONTRACTS / "census_employment.yaml").read_text()
    text = text.replace("min_rows: 60000", "min_rows: 2000")
    (folder / "census_employment.yaml").write_text(
        text.replace("min_new_rows: 20000", "min_new_rows: 1000")
    )
    return folder


def stale_events() -> list[tuple[str, Event]]:
    """What the old store's services published, naming objects only that store held."""
    model = CENSUS.name
    return [
        (
            topics.DATA_BATCHES,
            BatchCreated(
                dataset=model,
                batch_id="b-old",
                uri="file:///var/lib/old-store/batches/census_employment/b-old.parquet",
                rows=500,
                sha256="0" * 64,
            ),
        ),
        (
            topics.DATA_VALIDATED,
            DatasetValidated(
                dataset=model,
                dataset_version="dv-old",
                rows=60_000,
                new_rows=60_000,
                batch_ids=["b-old"],
                report_uri="file:///var/lib/old-store/reports/dv-old.json",
            ),
        ),
        (
            topics.MODELS_REGISTERED,
            ModelRegistered(
                model=model, version=7, dataset_version="dv-old", manifest_uri="file:///x"
            ),
        ),
        (
            topics.MODELS_DEPLOYMENTS,
            sign(
                Deployment(
                    model=model,
                    action="promote",
                    version=7,
                    champion_version=7,
                    history=[0],
                    reason="promoted by the old store's training",
                ),
                DEPLOY_KEY,
            ),
        ),
    ]


async def test_services_skip_and_count_what_a_new_store_lacks_then_train_and_serve(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str, tmp_path: Path
) -> None:
    contracts = small_census_contracts(tmp_path)
    env = {"FLYWHEEL_CONTRACTS": str(contracts)}
    ingestion = start_service("ingestion", FLYWHEEL_INGESTION_BATCH_ROWS="3000", **env)
    validation = start_service("validation", **env)
    training = start_service("training", **FAST_TRAINING, **env)
    serving = start_service("serving", **env)
    monitoring = start_service("monitoring", **env)

    publisher = EventPublisher(kafka_settings, "old-store", structlog.get_logger())
    await publisher.start()
    try:
        for topic, event in stale_events():
            await publisher.publish(topic, CENSUS.name, event)
    finally:
        await publisher.stop()

    def counted() -> dict[str, float]:
        figures = {
            "validation_missing_batch": metric(
                validation,
                "flywheel_validation_invalid_messages_total",
                dataset=CENSUS.name,
                reason="missing_batch",
            ),
            "training_missing_dataset_version": metric(
                training,
                "flywheel_training_missing_objects_total",
                model=CENSUS.name,
                kind="dataset_version",
            ),
            "serving_unknown_version": metric(
                serving,
                "flywheel_serving_deployment_refusals_total",
                model=CENSUS.name,
                reason="unknown_version",
            ),
            "monitoring_missing_deployment": metric(
                monitoring,
                "flywheel_monitoring_rejected_total",
                topic=topics.MODELS_DEPLOYMENTS,
                reason="missing_model_version",
            ),
            "monitoring_missing_registered": metric(
                monitoring,
                "flywheel_monitoring_rejected_total",
                topic=topics.MODELS_REGISTERED,
                reason="missing_model_version",
            ),
        }
        return figures if all(figures.values()) else {}

    skipped = await asyncio.to_thread(wait_for, counted, 120, "every service to count a skip")
    for proc in (ingestion, validation, training, serving, monitoring):
        assert proc.returncode is None, f"{proc.name} stopped:\n" + "\n".join(proc.tail)

    # New data: validated, trained, promoted and served from the new store.
    await publish_events(kafka_settings, census_events(3000))
    registry = Registry(ArtifactStore(store_uri))
    champion = await asyncio.to_thread(
        wait_for,
        lambda: registry.aliases(CENSUS.name).get("champion"),
        300,
        "a champion trained on the new data",
    )
    contract = load_contract(contracts / "census_employment.yaml")
    x = feature_matrix(contract, census_rows(DATA, 4, offset=5000)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client = triton.InferenceServerClient(
        str(serving.ready_info["grpc_address"]).replace("0.0.0.0", "127.0.0.1")
    )

    def served() -> str:
        try:
            return str(client.infer(CENSUS.name, [inp]).get_response().model_version)
        except triton.InferenceServerException:
            return ""  # not loaded yet

    version = await asyncio.to_thread(wait_for, served, 120, "the new champion to answer")
    report("new_store", champion=champion, served_version=version, **skipped)
    assert version == str(champion)
    # a stale trigger is a counted skip, never a failed run
    assert (
        metric(training, "flywheel_training_runs_total", model=CENSUS.name, outcome="failed") == 0
    )
