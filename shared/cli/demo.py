"""The demo: the whole flywheel on real data, driven from outside like a user would.

1. publish the census 2015 reference data → dataset version → a fast first candidate
   (v1) registered, promoted and answering on gRPC within seconds, then the searched
   model (v2) promoted over it through the same gates;
2. serve 2016-2018 census rows over gRPC while publishing their true labels as feedback;
3. show live quality per group and drift; then the car-loan data: a first model on its
   reference, its drifting analysis period served (with feedback) and published as new
   labelled data → drift evidence, a retrain, the challenger's canary and its promotion
   or rollback;
4. print where to look.

Everything goes through the public surfaces: Kafka topics, the OIP v2 gRPC endpoint,
the metrics endpoint and the artifact store (read-only). :func:`run_demo` returns a
:class:`DemoReport` of what it observed, which the end-to-end test asserts on.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from prometheus_client.parser import text_string_to_metric_families
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared import topics
from shared.cli._output import console
from shared.cli.data import publish_events, rows_to_events
from shared.cli.predict import build_request
from shared.contract import Contract, load_contracts
from shared.datasets import DatasetCatalog
from shared.kafka import producer_kwargs
from shared.protogen import inference_pb2_grpc as pb_grpc
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore

DATA = Path("var/data")


class DemoAborted(RuntimeError):
    """Ctrl-C during the demo, or an outcome that did not arrive in time."""


@dataclass
class Endpoints:
    """Where the running stack answers."""

    grpc: str
    monitoring_metrics: str
    store: str
    contracts: str = "./contracts"
    data: Path = DATA


@dataclass
class DemoReport:
    """What the demo observed (the end-to-end test asserts on it)."""

    census_rows: int = 0
    census_dataset_version: str = ""
    census_model_version: int | None = None
    served: int = 0
    served_versions: set[int] = field(default_factory=set)
    data_versions: set[str] = field(default_factory=set)
    prediction_ids: list[str] = field(default_factory=list)
    feedback: int = 0
    group_quality: dict[str, float] = field(default_factory=dict)
    car_champion: int | None = None
    car_drift: dict[str, float] = field(default_factory=dict)
    car_retrain_reasons: list[str] = field(default_factory=list)
    car_challenger: int | None = None
    car_outcome: str = ""
    seconds: float = 0.0


@dataclass
class _Ctx:
    kafka: KafkaSettings
    ep: Endpoints
    stop: threading.Event
    store: ArtifactStore
    contracts: dict[str, Contract]
    timeout_s: float

    @property
    def registry(self) -> Registry:
        return Registry(self.store)

    @property
    def catalog(self) -> DatasetCatalog:
        return DatasetCatalog(self.store)


def _wait(ctx: _Ctx, what: str, check: Callable[[], Any], timeout: float | None = None) -> Any:
    """Poll ``check`` until it returns a truthy value (an eventual outcome, with a deadline)."""
    deadline = time.monotonic() + (timeout or ctx.timeout_s)
    with console.status(f"waiting for {what}"):
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise DemoAborted(f"{what}: not seen within {timeout or ctx.timeout_s:.0f}s")
            if ctx.stop.wait(0.5):
                raise DemoAborted("interrupted")


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _publish(ctx: _Ctx, label: str, events: list[dict[str, Any]]) -> int:
    with _bar() as bar:
        task = bar.add_task(label, total=len(events))
        return asyncio.run(
            publish_events(ctx.kafka, events, on_progress=lambda n: bar.update(task, completed=n))
        )


def _publish_feedback(ctx: _Ctx, pairs: list[tuple[str, Any]]) -> int:
    from aiokafka import AIOKafkaProducer

    async def send() -> int:
        producer = AIOKafkaProducer(
            **await producer_kwargs(ctx.kafka, "demo-feedback"), linger_ms=10
        )
        await producer.start()
        try:
            futures = [
                await producer.send(
                    topics.FEEDBACK,
                    json.dumps({"prediction_id": pid, "label": label}).encode(),
                    key=pid.encode(),
                )
                for pid, label in pairs
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return len(pairs)

    return asyncio.run(send())


def _chunks(table: pa.Table, size: int) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, size):
        yield table.slice(start, size)


def _serve(
    ctx: _Ctx,
    report: DemoReport,
    contract: Contract,
    table: pa.Table,
    label: str,
    batch: int = 64,
) -> list[tuple[str, Any]]:
    """Send ``table``'s rows over gRPC; (prediction id, true label) pairs for feedback."""
    labels = table.column(contract.label.name).to_pylist()
    pairs: list[tuple[str, Any]] = []
    with grpc.insecure_channel(ctx.ep.grpc) as channel, _bar() as bar:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        task = bar.add_task(label, total=table.num_rows)
        offset = 0
        for part in _chunks(table, batch):
            request = build_request(contract.name, "", contract, part.to_pandas())
            response = stub.ModelInfer(request, timeout=30)
            report.served_versions.add(int(response.model_version))
            report.data_versions.add(response.parameters["data_version"].string_param)
            ids = next(o for o in response.outputs if o.name == "prediction_id")
            for i, pid in enumerate(ids.contents.bytes_contents):
                truth = labels[offset + i]
                pairs.append((pid.decode(), int(truth) if isinstance(truth, float) else truth))
            offset += part.num_rows
            bar.update(task, completed=offset)
    report.served += len(pairs)
    return pairs


def _answering_version(ctx: _Ctx, contract: Contract, table: pa.Table) -> int:
    """The version serving answers ``contract``'s model with right now (0: not loaded)."""
    request = build_request(contract.name, "", contract, table.slice(0, 1).to_pandas())
    try:
        with grpc.insecure_channel(ctx.ep.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            response = stub.ModelInfer(request, timeout=5)
    except grpc.RpcError:
        return 0
    return int(response.model_version)


def _metrics(ctx: _Ctx, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples named ``name`` (a counter's with ``_total``) from the monitoring endpoint."""
    with urllib.request.urlopen(ctx.ep.monitoring_metrics, timeout=5) as resp:
        text = resp.read().decode()
    return [
        (dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def first_run_done(registry: Registry, model: str) -> int | None:
    """The newest version once a model's first training run is over, else None.

    That run may register a fast first candidate (``candidate: fast_first``) and then
    the searched model; it is over when the newest version is not a fast candidate and
    the deployment its manifest planned (``deployment``) is in the aliases.
    """
    numbers = registry.version_numbers(model)
    if not numbers:
        return None
    newest = registry.get(model, numbers[-1])
    extra = newest.model_extra or {}
    if extra.get("candidate") == "fast_first":
        return None
    aliases = registry.aliases(model)
    if extra.get("deployment") and newest.version not in aliases.values():
        return None
    return newest.version


def _first_run(ctx: _Ctx, contract: Contract, table: pa.Table) -> int:
    """Wait for the first model to answer, then for the first run's searched model; the
    champion once both are in."""
    name = contract.name
    first = _wait(ctx, f"{name}'s first model", lambda: ctx.registry.aliases(name)["champion"])
    _wait(
        ctx,
        f"serving to answer {name} v{first}",
        lambda: _answering_version(ctx, contract, table) > 0,
    )
    manifest = ctx.registry.get(name, first)
    kind = (manifest.model_extra or {}).get("candidate", "search")
    console.print(
        f"v{first} ({manifest.estimator}, {kind.replace('_', ' ')}) answering, trained on "
        f"{manifest.dataset_version[:12]}: "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(manifest.metrics.items())[:5])
    )
    searched = _wait(ctx, f"{name}'s searched model", lambda: first_run_done(ctx.registry, name))
    aliases = ctx.registry.aliases(name)
    if searched != first:
        m = ctx.registry.get(name, searched)
        failed = [g for g, r in m.gates.items() if not r.passed]
        where = (
            "champion"
            if aliases["champion"] == searched
            else f"challenger beside v{aliases['champion']}"
            if aliases["challenger"] == searched
            else f"not deployed (gates failed: {', '.join(failed) or 'none'})"
        )
        console.print(
            f"v{searched} ({m.estimator}, searched): "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(m.metrics.items())[:5])
            + f"; {where}"
        )
    champion = aliases["champion"]
    assert champion is not None
    _wait(
        ctx,
        f"serving to answer {name} with v{champion}",
        lambda: _answering_version(ctx, contract, table) == champion,
    )
    return champion


def _read_census(ctx: _Ctx, name: str) -> pa.Table:
    return pq.read_table(ctx.ep.data / name)


def _read_car(ctx: _Ctx, name: str, target: str | None = None) -> pa.Table:
    table = pacsv.read_csv(ctx.ep.data / name)
    if target:
        labels = pacsv.read_csv(ctx.ep.data / target)
        table = table.join(labels, "id").sort_by("id")
    return table


def _step_census(ctx: _Ctx, report: DemoReport, rows: int) -> None:
    contract = ctx.contracts["census_employment"]
    console.rule("[bold]1. census 2015 reference → dataset version → first model → searched model")
    reference = _read_census(ctx, "employment_MA_reference.pq")
    _publish(ctx, "publishing census 2015", rows_to_events(contract, reference))

    def dataset_ready() -> Any:
        latest = ctx.catalog.latest(contract.name)
        return latest if latest and latest.rows >= reference.num_rows else None

    version = _wait(ctx, "the census dataset version", dataset_ready)
    report.census_rows, report.census_dataset_version = version.rows, version.id
    console.print(
        f"dataset version {version.id[:12]}: {version.rows} rows, {len(version.batches)} batches"
    )
    report.census_model_version = _first_run(ctx, contract, reference)

    console.rule("[bold]2. census 2016-2018 served over gRPC, true labels as feedback")
    analysis = _read_census(ctx, "employment_MA_analysis.pq")
    targets = _read_census(ctx, "employment_MA_analysis_target.pq")
    analysis = analysis.slice(0, rows).join(targets, "id").sort_by("id")
    pairs = _serve(ctx, report, contract, analysis, "census predictions")
    report.prediction_ids.extend(pid for pid, _ in pairs)
    report.feedback += _publish_feedback(ctx, pairs)
    console.print(
        f"{len(pairs)} predictions by versions {sorted(report.served_versions)}, data versions "
        f"{sorted(v[:12] for v in report.data_versions)}; {len(pairs)} labels sent as feedback"
    )

    console.rule("[bold]3a. live quality per group (monitoring, delayed labels joined)")

    def group_quality() -> dict[str, float]:
        return {
            f"{lab['group']} {lab['metric']}": value
            for lab, value in _metrics(ctx, "flywheel_monitoring_group_metric")
            if lab.get("model") == contract.name
        }

    report.group_quality = _wait(ctx, "live quality per group", group_quality)
    live = {
        lab["metric"]: value
        for lab, value in _metrics(ctx, "flywheel_monitoring_live_metric")
        if lab.get("model") == contract.name
    }
    console.print("live: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(live.items())))
    for key, value in sorted(report.group_quality.items())[:12]:
        console.print(f"  {key}: {value:.3f}")


def _step_car_loan(ctx: _Ctx, report: DemoReport) -> None:
    contract = ctx.contracts["car_loan"]
    console.rule("[bold]3b. car loans: reference → v1; the drifting analysis period")
    reference = _read_car(ctx, "synthetic_car_loan_reference.csv")
    latest = ctx.catalog.latest(contract.name)
    if latest is not None and latest.rows > reference.num_rows:
        # A second run: the store already holds this story; replaying it would only dedup.
        aliases = ctx.registry.aliases(contract.name)
        report.car_champion = aliases["champion"]
        report.car_outcome = f"already ran: champion v{aliases['champion']}"
        for change in ctx.registry.history(contract.name):
            console.print(
                f"  {change.alias} -> "
                f"{'none' if change.version is None else f'v{change.version}'}"
                f" by {change.actor}: {change.reason}"
            )
        return
    _publish(ctx, "publishing car-loan reference", rows_to_events(contract, reference))
    # The first run's searched model is a canary beside the fast first candidate (the
    # contract's strategy); the traffic below decides it as it would any canary.
    champion = _first_run(ctx, contract, reference)
    report.car_champion = champion
    analysis = _read_car(
        ctx, "synthetic_car_loan_analysis.csv", "synthetic_car_loan_analysis_target.csv"
    )
    half = analysis.num_rows // 2
    first, second = analysis.slice(0, half), analysis.slice(half)
    report.feedback += _publish_feedback(ctx, _serve(ctx, report, contract, first, "first half"))
    report.feedback += _publish_feedback(
        ctx, _serve(ctx, report, contract, second, "second half (drifts)")
    )

    served_car = analysis.num_rows

    def drift() -> dict[str, float]:
        # Only once monitoring has consumed every served row: its latest window is then
        # the drifted period, not the first half it may still be working through.
        consumed = sum(
            value
            for lab, value in _metrics(ctx, "flywheel_monitoring_predictions_total")
            if lab.get("model") == contract.name
        )
        if consumed < served_car:
            return {}
        return {
            lab["feature"]: value
            for lab, value in _metrics(ctx, "flywheel_monitoring_drift_score")
            if lab.get("model") == contract.name and lab.get("stat") == "psi"
        }

    report.car_drift = _wait(ctx, "drift scores", drift)
    console.print(
        "PSI of served data vs training reference: "
        + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(report.car_drift.items(), key=lambda x: -x[1])
        )
    )
    # The labelled drifted period also comes back as data: new dataset versions to learn from.
    _publish(ctx, "publishing labelled second half", rows_to_events(contract, second))

    def trained_on_new_data() -> int | None:
        # Monitoring's drift request waits for new data (v1's data is unchanged); the
        # first dataset version with rows of the drifted period trains the challenger.
        for v in ctx.registry.version_numbers(contract.name):
            manifest = ctx.registry.get(contract.name, v)
            rows = ctx.catalog.get(contract.name, manifest.dataset_version).rows
            if v > champion and rows > reference.num_rows:
                return v
        return None

    version = _wait(ctx, "a model trained on the drifted period", trained_on_new_data)
    for v in ctx.registry.version_numbers(contract.name):
        if champion < v <= version:
            m = ctx.registry.get(contract.name, v)
            failed = [g for g, r in m.gates.items() if not r.passed]
            report.car_retrain_reasons.append(m.reason)
            console.print(
                f"v{v} trained ({m.reason}); {m.metrics.get('roc_auc', float('nan')):.4f} roc_auc; "
                f"gates failed: {failed or 'none'}"
            )
    # A later dataset version of the drifted period can train a newer canary before this
    # one is decided: the demo then follows the newer one (with its own canary traffic).
    while True:
        manifest = ctx.registry.get(contract.name, version)
        failed = [g for g, r in manifest.gates.items() if not r.passed]
        report.car_challenger = version
        if failed:
            report.car_outcome = "registered, not deployed: " + ", ".join(failed)
            console.print(report.car_outcome)
            return
        outcome = _canary(ctx, report, contract, second, version)
        if not outcome.startswith("replaced by v"):
            break
        newer = int(outcome.removeprefix("replaced by v"))
        newest = ctx.registry.get(contract.name, newer)
        report.car_retrain_reasons.append(newest.reason)
        console.print(f"v{version} was replaced as the canary by v{newer} ({newest.reason})")
        version = newer
    report.car_outcome = outcome
    last = ctx.registry.history(contract.name)[-1]
    console.print(f"v{version} {report.car_outcome} by {last.actor}: {last.reason}")


def _canary(
    ctx: _Ctx, report: DemoReport, contract: Contract, traffic: pa.Table, version: int
) -> str:
    """Wait for ``version``'s deployment, send it labelled traffic when it is a canary, and
    wait for its outcome: ``promoted``, ``rolled back`` or ``replaced by v<N>``."""
    # The manifest is written before the aliases move: wait for the deployment itself.
    aliases = _wait(
        ctx,
        f"v{version}'s deployment",
        lambda: (
            (a := ctx.registry.aliases(contract.name))
            and version in (a["challenger"], a["champion"])
            and a
        ),
    )
    if aliases["champion"] != version:
        console.print(f"v{version} is the canary beside champion v{aliases['champion']}")
        # Labelled traffic for the canary: monitoring compares it with the champion.
        report.feedback += _publish_feedback(
            ctx, _serve(ctx, report, contract, traffic, "canary traffic")
        )

    def decided() -> str:
        now = ctx.registry.aliases(contract.name)
        if now["champion"] == version:
            return "promoted"
        if now["challenger"] is not None and now["challenger"] > version:
            return f"replaced by v{now['challenger']}"
        if now["challenger"] is None and now["champion"] != version:
            return "rolled back"
        return ""

    outcome: str = _wait(ctx, "the canary's promotion or rollback", decided)
    return outcome


def run_demo(
    kafka: KafkaSettings,
    endpoints: Endpoints,
    stop: threading.Event | None = None,
    census_rows: int = 5000,
    timeout_s: float = 240.0,
) -> DemoReport:
    """Drive the running stack through the flywheel; what it observed.

    Args:
        kafka: where the stack's broker is.
        endpoints: gRPC, monitoring metrics and store of the running stack.
        stop: set to abort (Ctrl-C).
        census_rows: census 2016-2018 rows to serve.
        timeout_s: deadline for each awaited outcome.
    """
    started = time.monotonic()
    ctx = _Ctx(
        kafka=kafka,
        ep=endpoints,
        stop=stop or threading.Event(),
        store=ArtifactStore(endpoints.store),
        contracts=load_contracts(endpoints.contracts),
        timeout_s=timeout_s,
    )
    report = DemoReport()
    _step_census(ctx, report, census_rows)
    _step_car_loan(ctx, report)
    report.seconds = time.monotonic() - started
    console.rule("[bold]4. where to look")
    pid = report.prediction_ids[0] if report.prediction_ids else "PREDICTION_ID"
    console.print(
        f"gRPC (OIP v2): {endpoints.grpc}   e.g. .venv/bin/flywheel predict census_employment "
        f"{endpoints.data / 'employment_MA_analysis.pq'} --limit 5\n"
        f"metrics: http://127.0.0.1:9101/metrics … :9105/metrics\n"
        f"models:  .venv/bin/flywheel models; .venv/bin/flywheel model census_employment 1\n"
        f"data:    .venv/bin/flywheel datasets; .venv/bin/flywheel dlq\n"
        f"lineage: .venv/bin/flywheel lineage {pid}\n"
        "dashboards: `docker compose up` serves Grafana on http://localhost:3000 "
        "(deploy/grafana/dashboards)"
    )
    console.print(f"demo finished in {report.seconds:.0f}s")
    return report
