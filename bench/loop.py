"""Loop latency: from the last data event published to a model answering on gRPC.

The whole system runs as it does in production, on this machine: an embedded broker
and the five services as real processes (``python -m services.<name>``) over a fresh
store. The census reference data (68,785 rows) is published as data events with the
``flywheel publish`` mapping, then a tritonclient polls ``ModelInfer``. Two instants
are measured: the *first answer* (the first response from any version: the fast first
candidate, ``training.fast_first``, version 1) and the *searched champion* answering
(the first response from a version whose manifest says ``candidate: search``, the
time-boxed search's winner, version 2, promoted through the normal gates).

Ingestion is configured so that the reference data is exactly one batch (``batch_rows``
= its row count, a long time window): the batch is cut by the last event, so both
versions are trained on all of it and the loop starts at a well-defined instant. The
split comes from the ``created`` timestamps of the events on the topics (same machine
clock), each stage from the end of the one before:

- ingestion: last event acknowledged by the broker -> ``data.batches`` event;
- validation: -> ``data.validated`` (the dataset version both versions are trained on);
- training: -> ``models.registered`` of the first version;
- serving: the later of that and its ``models.deployments`` promote -> the first gRPC
  response (seen by the client);
- training (search): -> ``models.registered`` of the searched version;
- serving (search): the later of that and its promotion -> its first gRPC response.

Four profiles of training settings: the contract's own (a 10 s search budget, the
search cross-validated on up to 10,000 rows, ``training.search_max_rows``, and the
winner refit on every training row) — the one the goal is about; the search capped at
3 s (``FLYWHEEL_TRAINING_SEARCH_BUDGET_S``); that cap with training on the latest
10,000 rows only (``FLYWHEEL_TRAINING_MAX_TRAIN_ROWS``); and that plus a leaner
evaluation (2 CV folds, permutation importance on 1,000 holdout rows, one repeat),
which shows what the rest of the loop costs. Training's own phase split comes from
its ``flywheel_training_phase_seconds`` metric. ``--quick`` runs the contract's
profile once.

``python -m bench.loop [--quick]``; ``run(quick)`` returns the figures as a dict:
``loop_s`` is the first answer, ``searched_loop_s`` the searched champion's.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "census_employment"
DATA = ROOT / "var" / "data" / "employment_MA_reference.pq"
SESSION_TIMEOUT_MS = 3000
"""Consumer group timeouts as in the test suite: Tansu joins a group in about half of it."""
PROFILES: dict[str, dict[str, str]] = {
    "contract_budget": {},
    "search_3s": {"FLYWHEEL_TRAINING_SEARCH_BUDGET_S": "3"},
    "search_3s_10k_rows": {
        "FLYWHEEL_TRAINING_SEARCH_BUDGET_S": "3",
        "FLYWHEEL_TRAINING_MAX_TRAIN_ROWS": "10000",
    },
    "lean_evaluation": {
        "FLYWHEEL_TRAINING_SEARCH_BUDGET_S": "3",
        "FLYWHEEL_TRAINING_MAX_TRAIN_ROWS": "10000",
        "FLYWHEEL_TRAINING_CV_FOLDS": "2",
        "FLYWHEEL_TRAINING_IMPORTANCE_ROWS": "1000",
        "FLYWHEEL_TRAINING_IMPORTANCE_REPEATS": "1",
    },
}
REPEATS = 2
"""Loops per profile in a full run (each on a fresh broker, store and stack)."""
FIRST_GOAL_S = 5.0
"""Goal: the last event to the first answer."""
SEARCHED_GOAL_S = 15.0
"""Goal: the last event to the searched champion answering."""
ANSWER_TIMEOUT_S = 600.0
POLL_INTERVAL_S = 0.02
"""Between polls until the first answer (a refused call costs serving next to nothing)."""
ANSWERED_POLL_INTERVAL_S = 0.1
"""Between polls once a model answers: each answer is a prediction served, published
and monitored, and polling at 50/s took CPU from the search running beside it."""


@dataclass
class Stack:
    """The running services and where to reach them."""

    procs: list[Any]
    grpc_address: str
    bootstrap: str


def _env(bootstrap: str, store: str, rows: int, extra: dict[str, str]) -> dict[str, str]:
    from shared.embedded import free_port

    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
        "FLYWHEEL_STORE": store,
        "FLYWHEEL_CONTRACTS": str(ROOT / "contracts"),
        "FLYWHEEL_LOG_LEVEL": "INFO",
        # Serving loads only deployments signed with the stack's key (as `flywheel up`
        # generates one): a fresh key per loop.
        "FLYWHEEL_DEPLOY_KEY": secrets.token_hex(32),
        "FLYWHEEL_SERVING_GRPC_PORT": str(free_port()),
        "FLYWHEEL_SERVING_HTTP_PORT": str(free_port()),
        # One batch = the reference data: the count cuts it at the last event.
        "FLYWHEEL_INGESTION_BATCH_ROWS": str(rows),
        "FLYWHEEL_INGESTION_BATCH_SECONDS": "120",
        **extra,
    }
    for name in ("INGESTION", "VALIDATION", "TRAINING", "SERVING", "MONITORING"):
        env[f"FLYWHEEL_{name}_METRICS_PORT"] = "0"
    return env


def start_stack(env: dict[str, str]) -> Stack:
    """Start every service (in parallel) and wait for each ready line."""
    from shared.procs import SERVICES, ServiceProcess

    procs = [ServiceProcess(name, env=env) for name in SERVICES]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.wait_ready(180)
    except BaseException:
        stop_stack(procs)
        raise
    serving = next(p for p in procs if p.name == "serving")
    return Stack(procs, str(serving.ready_info["grpc_address"]), env["KAFKA_BOOTSTRAP_SERVERS"])


def training_phases(stack: Stack) -> dict[str, float]:
    """Seconds per phase of the training runs so far, from the service's metrics."""
    import urllib.request

    training = next(p for p in stack.procs if p.name == "training")
    url = f"http://127.0.0.1:{training.ready_info['metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    phases: dict[str, float] = {}
    prefix = "flywheel_training_phase_seconds_sum{"
    for line in text.splitlines():
        if line.startswith(prefix) and f'model="{MODEL}"' in line:
            phase = line.split('phase="', 1)[1].split('"', 1)[0]
            phases[phase] = round(float(line.rsplit(" ", 1)[1]), 3)
    return phases


def stop_stack(procs: list[Any]) -> dict[str, int | None]:
    """SIGTERM every service; their exit codes."""
    return {proc.name: proc.terminate() for proc in reversed(procs)}


async def _probe_ingestion(bootstrap: str) -> float:
    """Seconds until ingestion dead-letters a malformed probe event (it is consuming)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from shared import topics
    from shared.kafka import ensure_topics
    from shared.settings import KafkaSettings

    await ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), topics.ALL_TOPICS)
    dlq = AIOKafkaConsumer(
        topics.DATA_EVENTS_DLQ, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await dlq.start()
    await producer.start()
    started = time.perf_counter()
    try:
        await producer.send_and_wait(topics.DATA_EVENTS, b"bench probe: not json", key=b"probe")
        deadline = started + 120
        while time.perf_counter() < deadline:
            if any((await dlq.getmany(timeout_ms=200)).values()):
                return time.perf_counter() - started
        raise TimeoutError("ingestion did not dead-letter the probe event in 120 s")
    finally:
        await producer.stop()
        await dlq.stop()


def _publish(bootstrap: str) -> tuple[int, float, float]:
    """(events, publish seconds, wall time of the last acknowledgement)."""
    import pyarrow.parquet as pq

    from shared.cli.data import publish_events, rows_to_events
    from shared.contract import load_contract
    from shared.settings import KafkaSettings

    contract = load_contract(ROOT / "contracts" / f"{MODEL}.yaml")
    events = rows_to_events(contract, pq.read_table(DATA))
    started = time.perf_counter()
    done = asyncio.run(publish_events(KafkaSettings(bootstrap_servers=bootstrap), events))
    last = time.time()
    return done, time.perf_counter() - started, last


@dataclass
class Answers:
    """When the client first saw each answer of the loop."""

    first_at: float
    first_version: int
    searched_at: float
    searched_version: int
    polls: int
    searched_outcome: str = "answering"
    """``answering``, or ``refused: <gates>`` when the searched model failed a gate against
    the fast candidate (which then stays champion: the search found nothing better)."""


def _poll_answers(address: str, store: str, deadline_s: float) -> Answers:
    """Poll until a response comes from a searched version, noting the first response."""
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    from services.serving.testing import census_rows, feature_matrix
    from shared.contract import load_contract
    from shared.registry import Registry
    from shared.store import ArtifactStore

    registry = Registry(ArtifactStore(store))
    contract = load_contract(ROOT / "contracts" / f"{MODEL}.yaml")
    x = feature_matrix(contract, census_rows(DATA.parent, 1)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    polls = 0
    first: tuple[float, int] | None = None
    candidates: dict[int, str] = {}
    deadline = time.monotonic() + deadline_s
    with triton.InferenceServerClient(address) as client:
        while time.monotonic() < deadline:
            polls += 1
            try:
                result = client.infer(MODEL, [inp], client_timeout=5)
            except InferenceServerException:
                result = None
            if result is not None:
                at, version = time.time(), int(result.get_response().model_version)
                first = first or (at, version)
                if version not in candidates:  # its manifest was written before it served
                    extra = registry.get(MODEL, version).model_extra or {}
                    candidates[version] = str(extra.get("candidate", "search"))
                if candidates[version] == "search":
                    return Answers(first[0], first[1], at, version, polls)
            if first is not None:
                refused = _refused_search(registry, first[1])
                if refused is not None:
                    version, gates = refused
                    outcome = f"refused: {', '.join(gates)}"
                    return Answers(first[0], first[1], time.time(), version, polls, outcome)
            time.sleep(POLL_INTERVAL_S if first is None else ANSWERED_POLL_INTERVAL_S)
    raise TimeoutError(
        f"no answer from a searched version in {deadline_s} s ({polls} polls; first answer {first})"
    )


def _refused_search(registry: Any, first: int) -> tuple[int, list[str]] | None:
    """A searched version registered after ``first`` that failed a gate, with the gates."""
    for version in registry.version_numbers(MODEL):
        if version <= first:
            continue
        manifest = registry.get(MODEL, version)
        if str((manifest.model_extra or {}).get("candidate", "search")) != "search":
            continue
        failed = sorted(name for name, gate in manifest.gates.items() if not gate.passed)
        if failed:
            return version, failed
    return None


async def _read_topics(bootstrap: str) -> dict[str, list[dict[str, Any]]]:
    """Every record on the loop's topics, decoded, from the beginning."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared import topics

    names = [
        topics.DATA_BATCHES,
        topics.DATA_VALIDATED,
        topics.MODELS_REGISTERED,
        topics.MODELS_DEPLOYMENTS,
    ]
    from shared.kafka_protocol import fetch_partitions
    from shared.settings import KafkaSettings

    # An explicit metadata request: a consumer's own metadata holds no topic yet on Kafka.
    found = await fetch_partitions(KafkaSettings(bootstrap_servers=bootstrap), names, 30.0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in names for p in found[t]]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: dict[str, list[dict[str, Any]]] = {t: [] for t in names}

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                out[tp.topic].extend(json.loads(r.value) for r in records)
        return out
    finally:
        await consumer.stop()


def _created(event: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["created"]).timestamp()


def _version_events(
    records: dict[str, list[dict[str, Any]]], version: int
) -> tuple[dict[str, Any], float]:
    """A version's ``models.registered`` event and when serving could act on it.

    Training publishes the promotion and the registration together; serving acts on the
    deployment event, so its stage starts at whichever came last.
    """
    from shared import topics

    registered = next(
        e
        for e in records[topics.MODELS_REGISTERED]
        if e["model"] == MODEL and e["version"] == version
    )
    promoted = [
        _created(e)
        for e in records[topics.MODELS_DEPLOYMENTS]
        if e["model"] == MODEL and e["version"] == version and e["action"] == "promote"
    ]
    return registered, max([_created(registered), *promoted])


def _model(registered: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": registered["version"],
        "dataset_version": registered["dataset_version"],
        "promoted": registered.get("promoted"),
        "metrics": registered.get("metrics", {}),
    }


def split(records: dict[str, list[dict[str, Any]]], last_event: float, answers: Answers) -> Any:
    """The loop's stages in seconds, from the events of the two answering versions."""
    from shared import topics

    first, first_deployed = _version_events(records, answers.first_version)
    searched, searched_deployed = _version_events(records, answers.searched_version)
    validated = next(
        e
        for e in records[topics.DATA_VALIDATED]
        if e["dataset_version"] == first["dataset_version"]
    )
    batches = [
        e for e in records[topics.DATA_BATCHES] if e["batch_id"] in set(validated["batch_ids"])
    ]
    batch_at = max(_created(e) for e in batches)
    # Each stage runs from the previous mark; a serving stage from its deployment.
    marks = [
        ("ingestion->batch", batch_at, None),
        ("validation->dataset version", _created(validated), None),
        ("training->first registered", _created(first), None),
        ("serving->first answer", answers.first_at, first_deployed),
        ("training->searched registered", _created(searched), None),
    ]
    if answers.searched_outcome == "answering":
        marks.append(("serving->searched answer", answers.searched_at, searched_deployed))
    stages: dict[str, float] = {}
    previous = last_event
    for name, at, start in marks:
        stages[name] = round(max(0.0, at - (start if start is not None else previous)), 3)
        previous = max(previous, at)
    return {
        "stages_s": stages,
        "rows": validated["rows"],
        "batches": len(batches),
        "first_model": _model(first),
        "searched_model": _model(searched),
    }


def measure(extra_env: dict[str, str]) -> dict[str, Any]:
    """One loop on a fresh broker and store with the given service settings."""
    import pyarrow.parquet as pq

    from shared.embedded import EmbeddedBroker, free_port

    rows = pq.read_metadata(DATA).num_rows
    with (
        tempfile.TemporaryDirectory(prefix="flywheel-loop-") as tmp,
        EmbeddedBroker(free_port(), log=Path(tmp) / "broker.log") as broker,
    ):
        env = _env(broker.bootstrap, f"file://{tmp}/store", rows, extra_env)
        started = time.perf_counter()
        stack = start_stack(env)
        try:
            startup_s = time.perf_counter() - started
            probe_s = asyncio.run(_probe_ingestion(broker.bootstrap))
            events, publish_s, last_event = _publish(broker.bootstrap)
            answers = _poll_answers(stack.grpc_address, env["FLYWHEEL_STORE"], ANSWER_TIMEOUT_S)
            records = asyncio.run(_read_topics(broker.bootstrap))
            phases = training_phases(stack)
        finally:
            codes = stop_stack(stack.procs)
    out = {
        "env": extra_env,
        "events": events,
        "loop_s": round(answers.first_at - last_event, 3),
        "searched_loop_s": round(answers.searched_at - last_event, 3),
        "searched_outcome": answers.searched_outcome,
        **split(records, last_event, answers),
        "training_phases_s": phases,
        "publish_s": round(publish_s, 3),
        "stack_startup_s": round(startup_s, 3),
        "ingestion_probe_s": round(probe_s, 3),
        "polls": answers.polls,
        "exit_codes": codes,
    }
    return out


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats of one profile, with every run's own figures kept."""
    last = runs[-1]
    return {
        "env": last["env"],
        "repeats": len(runs),
        "loop_s": _median([r["loop_s"] for r in runs]),
        "loop_s_runs": [r["loop_s"] for r in runs],
        "searched_loop_s": _median([r["searched_loop_s"] for r in runs]),
        "searched_loop_s_runs": [r["searched_loop_s"] for r in runs],
        "searched_outcomes": [r["searched_outcome"] for r in runs],
        "stages_s": {s: _median([r["stages_s"][s] for r in runs]) for s in last["stages_s"]},
        "training_phases_s": {
            ph: _median([r["training_phases_s"].get(ph, 0.0) for r in runs])
            for ph in last["training_phases_s"]
        },
        "rows": last["rows"],
        "first_model": last["first_model"],
        "searched_model": last["searched_model"],
        "publish_s": _median([r["publish_s"] for r in runs]),
        "stack_startup_s": _median([r["stack_startup_s"] for r in runs]),
        "runs": [
            {
                k: r[k]
                for k in (
                    "loop_s",
                    "searched_loop_s",
                    "stages_s",
                    "training_phases_s",
                    "polls",
                    "exit_codes",
                )
            }
            for r in runs
        ],
    }


def run(quick: bool = False) -> dict[str, Any]:
    """The loop latency under each profile, medians over repeats.

    ``quick``: the contract's profile once. Repeats go round the profiles in turn,
    so a busy spell on a shared machine hits every profile alike.
    """
    load_before = os.getloadavg()
    names = ["contract_budget"] if quick else list(PROFILES)
    repeats = 1 if quick else REPEATS
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            runs[name].append(measure(PROFILES[name]))
    return {
        "quick": quick,
        "goal_s": FIRST_GOAL_S,
        "searched_goal_s": SEARCHED_GOAL_S,
        "profiles": {name: summarize(r) for name, r in runs.items()},
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }


def main() -> None:
    """Print the figures."""
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))


if __name__ == "__main__":
    main()
