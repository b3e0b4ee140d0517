"""The whole flywheel, end to end, with real processes on the embedded broker.

Drives the demo's steps 1-3 (shared/cli/demo.py) against five service processes and
checks each outcome from the artifact store and the prediction log, not from the
demo's own narration.
"""

from __future__ import annotations

import time

import pytest

from shared.cli.demo import Endpoints, run_demo
from shared.cli.lineage import lineage
from shared.datasets import DatasetCatalog
from shared.procs import SERVICES
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, DATA, StartService, need_data

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(900)]


def test_data_to_model_to_predictions_to_drift_to_retrain(
    start_service: StartService, kafka_settings: KafkaSettings, store_uri: str
) -> None:
    need_data("employment_MA_reference.pq", "synthetic_car_loan_reference.csv")
    ready = {name: start_service(name).ready_info for name in SERVICES}
    endpoints = Endpoints(
        grpc=str(ready["serving"]["grpc_address"]).replace("0.0.0.0", "127.0.0.1"),
        monitoring_metrics=f"http://127.0.0.1:{ready['monitoring']['metrics_port']}/metrics",
        store=store_uri,
        contracts=str(CONTRACTS),
        data=DATA,
    )
    report = run_demo(kafka_settings, endpoints, census_rows=3000, timeout_s=300)

    store = ArtifactStore(store_uri)
    registry, catalog = Registry(store), DatasetCatalog(store)
    # 1. census reference → dataset version with every row → v1 promoted, complete manifest
    census = catalog.latest("census_employment")
    assert census is not None
    assert census.rows == 68_785
    assert registry.aliases("census_employment")["champion"] == report.census_model_version
    v1 = registry.get("census_employment", report.census_model_version or 0)
    assert v1.parity.passed
    assert v1.gates
    assert all(g.passed for g in v1.gates.values())
    assert {"roc_auc", "accuracy", "f1"} <= set(v1.metrics)
    assert v1.group_metrics
    # 2. every served row tagged with the model version and its data version
    assert report.served >= 3000
    assert report.census_model_version in report.served_versions
    assert v1.dataset_version in report.data_versions
    assert report.feedback == report.served
    assert any(k.startswith("SEX=") for k in report.group_quality)
    # the audit trail: a census prediction traced back to its model, dataset and batches
    deadline = time.monotonic() + 60
    trail = None
    while time.monotonic() < deadline and trail is None:
        try:
            trail = lineage(store, report.prediction_ids[0])
        except LookupError:
            time.sleep(1)  # the prediction log flushes on a timer: an eventual outcome
    assert trail is not None, "prediction never reached the prediction log"
    text = str(trail)
    assert v1.dataset_version in text
    assert "offset" in text
    # 3. car loans: drift seen on served data, retraining with the evidence, canary decided
    assert report.car_drift["car_value"] > 0.1
    assert report.car_retrain_reasons
    assert any("drift" in reason for reason in report.car_retrain_reasons)
    assert report.car_challenger is not None
    assert report.car_outcome in {"promoted", "rolled back"} or report.car_outcome.startswith(
        "registered, not deployed"
    )
    history = registry.history("car_loan")
    if report.car_outcome in {"promoted", "rolled back"}:
        # Monitoring decided the canary; training may have canaried a later version since
        # (the drifted rows can arrive as more than one dataset version).
        canaried = max(
            c.seq for c in history if c.alias == "challenger" and c.version == report.car_challenger
        )
        assert any(c.actor == "monitoring" for c in history if c.seq > canaried), history
