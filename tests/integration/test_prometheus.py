"""A real Prometheus scraping real service processes: every dashboard and alert query works.

Serving and monitoring run as processes on a real broker with a seeded registry;
requests go to serving over gRPC (so its prediction events reach monitoring through
Kafka) and monitoring is also fed the car-loan analysis rows with feedback, a shadow
and a canary version, a dead letter and a quarantined batch. Prometheus (Debian
package) scrapes both every second and evaluates deploy/prometheus/alerts.yml.

Every expression must parse and evaluate. Expressions over monitoring's and serving's
metrics must return series; ingestion, validation and training are not started here
(their suites cover them), so expressions over their metrics are only checked to
parse and evaluate — listed in ``NOT_RUNNING``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest
import yaml

from services.monitoring.testing import load_car_loan, prediction_events, seed_version
from shared import topics
from shared.cli.predict import build_request
from shared.contract import load_contract
from shared.embedded import free_port
from shared.events import BatchQuarantined, DatasetValidated, DeadLetter, Feedback
from shared.kafka import ensure_topics
from shared.protogen import inference_pb2_grpc as pb_grpc
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, ROOT, StartService, need_data
from tests.deploying import decide
from tests.integration.test_monitoring import _publish

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

PROM_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
sys.path.insert(0, str(GRAFANA_DIR))
import render  # noqa: E402  (deploy/grafana is scripts, not a package)

NOT_RUNNING = ("flywheel_ingestion_", "flywheel_validation_", "flywheel_training_")
# Series that exist only after a particular event the feed does not cause.
EVENT_ONLY = (
    "flywheel_serving_errors_total",  # no failing request is sent
    'code!="OK"',
    "flywheel_serving_prediction_events_dropped_total",  # nothing is dropped
    # observed only when the adaptive batcher merges concurrent requests; these are sequential
    "flywheel_serving_queue_delay_seconds",
    # counted when the champion changes; here the canary is rolled back, v1 stays
    "flywheel_serving_swaps_total",
    # regressors' live figures: the stack here serves a classifier
    'metric=~"mae|rmse"',
    'metric="r2"',
)


def _need_prometheus() -> None:
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        pytest.skip(
            "the prometheus binary is not installed (make prometheus / apt install prometheus)"
        )


def test_promtool_accepts_the_configs_and_rules() -> None:
    _need_prometheus()
    for config in ("prometheus.yml", "prometheus.local.yml"):
        done = subprocess.run(
            ["promtool", "check", "config", str(PROM_DIR / config)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run(
        ["promtool", "check", "rules", str(PROM_DIR / "alerts.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression) of every panel target and annotation."""
    out = []
    for path in sorted((GRAFANA_DIR / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            out.extend((path.stem, panel["title"], t["expr"]) for t in panel["targets"])
        out.extend((path.stem, a["name"], a["expr"]) for a in board["annotations"]["list"])
    return out


def alert_rules() -> list[tuple[str, str]]:
    """(alert name, expression) of every rule."""
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_dashboards_are_generated_from_their_spec() -> None:
    done = subprocess.run(
        [sys.executable, str(GRAFANA_DIR / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    titles = {d for d, _, _ in dashboard_targets()}
    assert titles == {"overview", "data", "model_quality"}


@pytest.fixture
def prometheus(tmp_path: Path) -> tuple[str, Path]:
    """(base URL, config path) of a Prometheus started on a free port; configured later."""
    _need_prometheus()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    shutil.copy(PROM_DIR / "alerts.yml", tmp_path / "alerts.yml")
    return f"http://127.0.0.1:{port}", config


def _start_prometheus(base: str, config: Path, targets: dict[str, int]) -> subprocess.Popen[bytes]:
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["alerts.yml"],
                "scrape_configs": [
                    {
                        "job_name": "flywheel",
                        "static_configs": [
                            {"targets": [f"127.0.0.1:{port}"], "labels": {"service": name}}
                            for name, port in targets.items()
                        ],
                    }
                ],
            }
        )
    )
    port = base.rsplit(":", 1)[1]
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={config.parent / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(config.parent / "prometheus.log").open("wb"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)  # polling readiness of a foreign binary with a deadline
    proc.terminate()
    raise AssertionError(
        "prometheus not ready in 30s: " + (config.parent / "prometheus.log").read_text()
    )


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    data = render.api(base, "/api/v1/query", query=render.expand(expr))
    assert data["resultType"] in ("vector", "scalar", "matrix")
    result: list[dict[str, Any]] = data["result"] if data["resultType"] != "scalar" else [data]
    return result


def _wait_for(
    base: str, expr: str, timeout_s: float, tick: Callable[[], None] | None = None
) -> None:
    """Poll until ``expr`` returns a series; ``tick`` runs between polls (e.g. traffic)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _query(base, expr):
            return
        if tick is not None:
            tick()
        time.sleep(0.5)  # Prometheus scrapes every second: poll with a deadline
    raise AssertionError(f"no series for {expr} within {timeout_s}s")


def _infer(grpc_address: str, first: int, last: int) -> None:
    """Send analysis rows ``first:last`` to serving in requests of up to 50 rows."""
    contract = load_contract(CONTRACTS / "car_loan.yaml")
    _, analysis = load_car_loan(need_data("synthetic_car_loan_reference.csv")[0].parent)
    with grpc.insecure_channel(grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for start in range(first, last, 50):
            rows = analysis.iloc[start : min(start + 50, last)]
            stub.ModelInfer(build_request("car_loan", "", contract, rows))


def _feed(kafka_settings: KafkaSettings, store_uri: str, grpc_address: str) -> None:
    contract = load_contract(CONTRACTS / "car_loan.yaml")
    reference, analysis = load_car_loan(need_data("synthetic_car_loan_reference.csv")[0].parent)
    store = ArtifactStore(store_uri)
    registry = Registry(store)
    v1, v2, v3 = (registry.get("car_loan", v) for v in (1, 2, 3))
    # Real requests through serving: its prediction events reach monitoring over Kafka.
    _infer(grpc_address, 1, 200)
    # Champion rows with a shadow's answers, canary rows, then the drifted half, with labels.
    rows = pd.concat([analysis.iloc[1000:3000], analysis.iloc[-4000:]])
    champion = list(prediction_events(contract, rows, v1))
    canary_rows = analysis.iloc[3000:3600]
    # A worse canary, so monitoring rolls it back and v1 stays the champion.
    canary = list(prediction_events(contract, canary_rows, v2, role="canary", invert=True))
    shadowed = [
        p.model_copy(
            update={
                "shadow": {
                    "model_version": 3,
                    "data_version": v3.dataset_version,
                    "outputs": p.outputs,
                }
            }
        )
        for p in champion[:500]
    ]
    preds = [*shadowed, *champion[500:], *canary]
    truth = dict(
        zip(
            pd.concat([rows, canary_rows])["id"].astype(str),
            pd.concat([rows, canary_rows])["repaid"],
            strict=True,
        )
    )
    feedback = [
        ("car_loan", Feedback(prediction_id=p.id, label=int(truth[p.request_id]))) for p in preds
    ]
    others = [
        (
            "car_loan",
            DeadLetter(
                source_topic="data.events",
                partition=0,
                offset=1,
                dataset="car_loan",
                error="bad json",
                payload="{",
            ),
        ),
        (
            "car_loan",
            BatchQuarantined(
                dataset="car_loan",
                batch_id="b",
                failed_rules=["range"],
                report_uri="file:///r",
                reason="range",
            ),
        ),
        (
            "car_loan",
            DatasetValidated(
                dataset="car_loan",
                dataset_version=v1.dataset_version,
                rows=1,
                new_rows=1,
                batch_ids=["b"],
                report_uri="file:///r",
            ),
        ),
    ]

    async def publish() -> None:
        await _publish(kafka_settings, topics.PREDICTIONS, ((p.model, p) for p in preds))
        await _publish(kafka_settings, topics.FEEDBACK, feedback)
        await _publish(kafka_settings, topics.DATA_EVENTS_DLQ, others[:1])
        await _publish(kafka_settings, topics.DATA_QUARANTINED, others[1:2])
        await _publish(kafka_settings, topics.DATA_VALIDATED, others[2:])

    asyncio.run(publish())
    del reference


def test_every_dashboard_and_alert_expression_evaluates_on_a_running_stack(
    start_service: StartService,
    kafka_settings: KafkaSettings,
    store_uri: str,
    prometheus: tuple[str, Path],
    tmp_path: Path,
) -> None:
    base, config = prometheus
    contract = load_contract(CONTRACTS / "car_loan.yaml")
    reference, _ = load_car_loan(need_data("synthetic_car_loan_reference.csv")[0].parent)
    store = ArtifactStore(store_uri)
    seed_version(store, contract, reference.iloc[:20_000], 1)
    seed_version(store, contract, reference.iloc[20_000:25_000], 2, champion=False)
    seed_version(store, contract, reference.iloc[25_000:30_000], 3, champion=False)
    asyncio.run(ensure_topics(kafka_settings, topics.ALL_TOPICS))
    serving = start_service("serving")
    monitoring = start_service(
        "monitoring",
        FLYWHEEL_MONITORING_LOG_FLUSH_S="1",
        FLYWHEEL_MONITORING_LAG_INTERVAL_S="1",
        FLYWHEEL_MONITORING_EVAL_EVERY_LABELS="100",
    )
    canary = decide(Registry(store), contract, "canary", 2, canary_percent=20)
    asyncio.run(_publish(kafka_settings, topics.MODELS_DEPLOYMENTS, [("car_loan", canary)]))
    targets = {
        "serving": int(serving.ready_info["metrics_port"]),
        "monitoring": int(monitoring.ready_info["metrics_port"]),
    }
    proc = _start_prometheus(base, config, targets)
    try:
        # One request first, so the counters exist before they grow and rates are not 0.
        _infer(serving.ready_info["grpc_address"], 0, 1)
        _wait_for(base, "flywheel_serving_requests_total", 30)
        _feed(kafka_settings, store_uri, serving.ready_info["grpc_address"])
        _wait_for(base, 'flywheel_monitoring_actions_total{action="retrain"} > 0', 60)
        for counter in ("dlq", "quarantined", "dataset_versions"):
            _wait_for(base, f"flywheel_monitoring_{counter}_total > 0", 30)
        _wait_for(base, "flywheel_monitoring_metric_difference", 60)
        _wait_for(
            base, 'increase(flywheel_monitoring_actions_total{action="rollback"}[1m]) > 0', 60
        )
        _wait_for(base, 'flywheel_monitoring_consumer_lag{group="flywheel-monitoring"}', 30)
        # A rate needs an increase between two scrapes of one series: keep traffic going
        # (on a loaded machine a scrape can miss the burst of _feed).
        address = serving.ready_info["grpc_address"]
        _wait_for(
            base,
            "rate(flywheel_serving_requests_total[5m]) > 0",
            60,
            tick=lambda: _infer(address, 0, 1),
        )
        _wait_for(base, "rate(flywheel_monitoring_labels_total[5m]) > 0", 30)

        empty: list[str] = []
        for dashboard, title, expr in dashboard_targets():
            result = _query(base, expr)  # raises unless Prometheus parsed and evaluated it
            running = not any(p in expr for p in NOT_RUNNING) and not any(
                e in expr for e in EVENT_ONLY
            )
            if running and 'action="promote"' not in expr and not result:
                empty.append(f"{dashboard}: {title}: {expr}")
        assert not empty, "panels without series:\n" + "\n".join(empty)

        for name, expr in alert_rules():
            _query(base, expr)
            for selector in re.findall(r"flywheel_monitoring_[a-z_]+(?:\{[^}]*\})?", expr):
                assert _query(base, selector), f"{name}: no series for {selector}"
        rules = render.api(base, "/api/v1/rules")
        health = {r["name"]: r["health"] for g in rules["groups"] for r in g["rules"]}
        assert len(health) == len(alert_rules())
        _wait_for(base, 'ALERTS{alertname="FlywheelFeatureDrift"}', 30)  # pending: for 10m
        assert all(h in ("ok", "unknown") for h in health.values()), health

        # FLYWHEEL_DOCS_IMG=docs/img regenerates the documentation's screenshots.
        img = Path(os.environ.get("FLYWHEEL_DOCS_IMG", tmp_path / "img"))
        pngs = render.render_all(base, img, minutes=2)
        assert [p.name for p in pngs] == [
            "dashboard_data.png",
            "dashboard_model_quality.png",
            "dashboard_overview.png",
        ]
        assert all(p.stat().st_size > 10_000 for p in pngs)
    finally:
        proc.terminate()
        proc.wait(10)
