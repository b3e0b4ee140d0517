"""Iris and diabetes, brought as a user brings data, round the whole loop with real processes.

The five services run as processes on a fresh broker; the shipped data files are published
with ``flywheel publish`` (the reference parts, with labels); once training has promoted a
first model of each, the held-out and analysis rows are sent through tritonclient (one
tensor per feature, named as the data names them: ``sepal length (cm)``), ``flywheel
models`` lists the champions, and the true labels go back as feedback until monitoring's
live metric covers them.

Each served model is measured against a plain scikit-learn HistGradientBoosting fitted in
this test on the same training rows (the registered dataset version minus the same
time-ordered holdout): iris within 2 points of accuracy, diabetes within 5% of MAE, on the
holdout and analysis rows together.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from shared import topics
from shared.cli.data import read_table
from shared.cli.demo import first_run_done
from shared.contract import Contract, load_contract
from shared.datasets import DatasetCatalog
from shared.kafka import producer_kwargs
from shared.procs import SERVICES
from shared.registry import ModelManifest, Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, ROOT, StartService, need_data

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

FLYWHEEL = str(Path(sys.executable).parent / "flywheel")
ACCURACY_MARGIN = 0.02
"""Iris: served accuracy at most 2 points below the plain HistGradientBoosting's."""
MAE_RATIO = 1.05
"""Diabetes: served MAE at most 5% above the plain HistGradientBoosting's."""


class DataSet:
    """A shipped data set: its contract and its reference, analysis and target files."""

    def __init__(self, name: str, suffix: str):
        self.contract: Contract = load_contract(CONTRACTS / f"{name}.yaml")
        ref, analysis, target = need_data(
            f"{name}_reference{suffix}",
            f"{name}_analysis{suffix}",
            f"{name}_analysis_target{suffix}",
        )
        self.reference_file = ref
        self.analysis = read_table(analysis).to_pandas()
        self.analysis_target = read_table(target).to_pandas()

    @property
    def name(self) -> str:
        return self.contract.name


def _flywheel(env: dict[str, str], *commands: list[str]) -> list[str]:
    """Run ``flywheel`` commands side by side; their outputs (each must exit 0)."""
    runs = [
        subprocess.Popen(
            [FLYWHEEL, *args],
            cwd=ROOT,
            env={**os.environ, **env, "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    outputs = []
    for args, run in zip(commands, runs, strict=True):
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, f"flywheel {' '.join(args)}:\n{out}\n{err}"
        outputs.append(out)
    return outputs


def _champion(registry: Registry, name: str, deadline: float) -> int:
    """The champion's version, once the first training run is over (a fast first
    candidate, then the searched model promoted over it or refused)."""
    while time.monotonic() < deadline:
        done = first_run_done(registry, name)
        version = registry.aliases(name)["champion"] if done else None
        if version is not None:
            return version
        time.sleep(0.5)  # training is an eventual outcome: poll the registry with a deadline
    raise AssertionError(
        f"no champion for {name} in {[m.version for m in registry.versions(name)]}"
    )


def _answering(
    address: str, contract: Contract, rows: pd.DataFrame, version: int, deadline: float
) -> None:
    """Wait until serving answers ``contract``'s model with ``version``."""
    answering = ""
    while time.monotonic() < deadline:
        answering = _infer(address, contract, rows)[2]
        if answering == str(version):
            return
        time.sleep(0.2)  # the deployment event is on its way to serving: poll with a deadline
    raise AssertionError(f"serving answers {contract.name} with v{answering}, not v{version}")


def _split(
    contract: Contract, table: pd.DataFrame, manifest: ModelManifest
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training rows and holdout of a registered version: its dataset version, the latest
    ``holdout.rows`` by event time (ties by id) held out, as the manifest records."""
    holdout = (manifest.model_extra or {})["holdout"]
    order = table.assign(_t=pd.to_datetime(table[contract.event_time], utc=True))
    order = order.assign(_id=pd.to_numeric(order[contract.id]))
    order = order.sort_values(["_t", "_id"], kind="stable").drop(columns=["_t", "_id"])
    k = int(holdout["rows"])
    train, held = order.iloc[:-k], order.iloc[-k:]
    assert str(held[contract.id].iloc[0]) == holdout["first_id"]
    assert str(held[contract.id].iloc[-1]) == holdout["last_id"]
    return train.reset_index(drop=True), held.reset_index(drop=True)


def _matrix(contract: Contract, rows: pd.DataFrame) -> np.ndarray:
    """Features as plain numbers for scikit-learn (a coded category by its code)."""
    return np.column_stack(
        [
            pd.to_numeric(
                rows[f].astype(str) if contract.feature(f).type == "category" else rows[f]
            )
            for f in contract.feature_names
        ]
    ).astype(np.float64)


def _infer(
    address: str, contract: Contract, rows: pd.DataFrame
) -> tuple[list[Any], list[str], str]:
    """Served answers (labels or predictions), prediction ids and the answering version;
    one tensor per feature, named as the contract names it."""
    client = triton.InferenceServerClient(address)
    try:
        inputs = []
        for f in contract.features:
            if f.is_numeric:
                t = triton.InferInput(f.name, [len(rows)], "FP64")
                t.set_data_from_numpy(rows[f.name].to_numpy(dtype=np.float64))
            else:
                text = [str(int(v)) if isinstance(v, float) else str(v) for v in rows[f.name]]
                t = triton.InferInput(f.name, [len(rows)], "BYTES")
                t.set_data_from_numpy(np.array([v.encode() for v in text], dtype=object))
            inputs.append(t)
        result = client.infer(contract.name, inputs)
    finally:
        client.close()
    ids = [v.decode() for v in result.as_numpy("prediction_id")]
    version = result.get_response().model_version
    if contract.task == "regression":
        return [float(v) for v in result.as_numpy("prediction").ravel()], ids, version
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    return labels, ids, version


def _plain_score(contract: Contract, train: pd.DataFrame, rows: pd.DataFrame) -> float:
    """Accuracy (classification) or MAE (regression) on ``rows`` of a default scikit-learn
    HistGradientBoosting fitted on ``train``."""
    y_name = contract.label.name
    # One OpenMP thread: on a loaded machine HistGradientBoosting's threads spin-wait.
    with threadpool_limits(limits=1):
        if contract.task == "classification":
            clf = HistGradientBoostingClassifier(random_state=0)
            clf.fit(_matrix(contract, train), train[y_name].astype(str))
            predicted = clf.predict(_matrix(contract, rows))
            return float(np.mean(predicted == rows[y_name].astype(str).to_numpy()))
        reg = HistGradientBoostingRegressor(random_state=0)
        reg.fit(_matrix(contract, train), train[y_name].astype(float))
        values = reg.predict(_matrix(contract, rows))
    return float(np.mean(np.abs(values - rows[y_name].astype(float).to_numpy())))


def _served_score(contract: Contract, served: list[Any], truth: list[Any]) -> float:
    if contract.task == "classification":
        return float(np.mean([str(a) == str(b) for a, b in zip(served, truth, strict=True)]))
    return float(np.mean(np.abs(np.array(served, dtype=float) - np.array(truth, dtype=float))))


async def _feedback(kafka: KafkaSettings, pairs: list[tuple[str, Any]]) -> None:
    producer = AIOKafkaProducer(**await producer_kwargs(kafka, "test-feedback"))
    await producer.start()
    try:
        sent = [
            await producer.send(
                topics.FEEDBACK,
                json.dumps({"prediction_id": pid, "label": label}).encode(),
                key=pid.encode(),
            )
            for pid, label in pairs
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _live(metrics_url: str, model: str, metric: str) -> dict[str, float]:
    """``flywheel_monitoring_live_metric{model, metric}`` per version, from /metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return {
        sample.labels["version"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "flywheel_monitoring_live_metric"
        for sample in family.samples
        if sample.labels.get("model") == model and sample.labels.get("metric") == metric
    }


def test_iris_and_diabetes_are_served_as_well_as_plain_histgradientboosting(
    start_service: StartService,
    service_env: dict[str, str],
    kafka_settings: KafkaSettings,
    store_uri: str,
) -> None:
    iris, diabetes = DataSet("iris", ".jsonl"), DataSet("diabetes", ".pq")
    # Monitoring evaluates at every label over a window holding all of them, so its live
    # metric at the end covers exactly the rows this test sent.
    env = {"FLYWHEEL_MONITORING_EVAL_EVERY_LABELS": "1", "FLYWHEEL_MONITORING_WINDOW_ROWS": "1000"}
    with ThreadPoolExecutor(len(SERVICES)) as pool:  # independent: start them side by side
        procs = list(pool.map(lambda name: start_service(name, **env), SERVICES))
    ready = {p.name: p.ready_info for p in procs}
    address = str(ready["serving"]["grpc_address"]).replace("0.0.0.0", "127.0.0.1")
    metrics_url = f"http://127.0.0.1:{ready['monitoring']['metrics_port']}/metrics"
    _flywheel(
        service_env,
        *[["publish", d.name, str(d.reference_file)] for d in (iris, diabetes)],
    )

    deadline = time.monotonic() + 300
    store = ArtifactStore(store_uri)
    registry, catalog = Registry(store), DatasetCatalog(store)
    measured: dict[str, dict[str, float]] = {}
    for data in (iris, diabetes):
        c = data.contract
        version = _champion(registry, data.name, deadline)
        manifest = registry.get(data.name, version)
        assert manifest.parity.passed
        # The same training rows: the version's dataset version minus its holdout.
        table = catalog.load_table(catalog.get(data.name, manifest.dataset_version)).to_pandas()
        train, held = _split(c, table, manifest)
        analysis = data.analysis.merge(data.analysis_target, on=c.id)
        rows = pd.concat([held, analysis], ignore_index=True)
        truth = rows[c.label.name].tolist()

        # The registry moves the alias before serving applies the deployment event.
        _answering(address, c, rows.iloc[:1], version, deadline)
        served, ids, answering = _infer(address, c, rows)
        assert answering == str(version)
        ours, plain = _served_score(c, served, truth), _plain_score(c, train, rows)
        measured[data.name] = {"served": ours, "plain_hgb": plain, "rows": len(rows)}
        if c.task == "classification":
            assert ours >= plain - ACCURACY_MARGIN, measured
        else:
            assert ours <= plain * MAE_RATIO, measured

        # Watch: the true labels, back as feedback, become that version's live metric.
        asyncio.run(_feedback(kafka_settings, list(zip(ids, truth, strict=True))))
        labelled: dict[str, float] = {}
        while time.monotonic() < deadline and labelled.get(str(version)) != len(rows):
            labelled = _live(metrics_url, data.name, "labelled_rows")
            time.sleep(0.5)  # monitoring joins feedback as it arrives: poll with a deadline
        assert labelled.get(str(version)) == len(rows), labelled
        metric = "accuracy" if c.task == "classification" else "mae"
        assert _live(metrics_url, data.name, metric)[str(version)] == pytest.approx(ours, rel=1e-6)

    [listing] = _flywheel(service_env, ["models"])
    for data in (iris, diabetes):
        lines = [row for row in listing.splitlines() if f" {data.name} " in f" {row} "]
        assert any("champion" in row for row in lines), listing
    print(f"served vs plain HistGradientBoosting: {measured}")
