"""Ingestion benchmark: end-to-end events/s next to the raw aiokafka consumer rate.

One run, one fresh embedded broker (medians of interleaved rounds; every round reads
the whole topic with a new consumer group, ingestion into a new store). Census
reference rows are published as data events
(the ``flywheel publish`` mapping, about 330 bytes of JSON each) to ``data.events``,
then read twice from the same topic:

1. **raw**: an aiokafka consumer doing ``getmany`` + ``json.loads`` on every message and
   nothing else — the ceiling for a Python consumer on this broker;
2. **ingestion**: the ingestion service's own worker and core (in this process, on the
   same code path as ``python -m services.ingestion``): envelope check, dedup, Arrow
   conversion, Parquet batches written to a temporary store, ``data.batches`` events
   acknowledged, offsets committed (default batch size, a 0.25 s time window). Timed
   from its first fetched chunk; a separate consumer notes when it sees each
   ``data.batches`` event.

The rate includes the tail of a finite run: the last partial batch waits for the time
window to close and for an empty poll (``batch_seconds`` + ``poll_timeout_ms``, up to
about 0.45 s here), so the run is long enough (200,000 events) for that latency not to
dominate; ``last_batch_gap_s`` records the time between the last two batch events.

``python -m bench.ingestion [--quick]``; ``run(quick)`` returns the figures as a dict.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "var" / "data" / "employment_MA_reference.pq"
RESULTS = ROOT / "bench" / "results" / "ingestion.json"
DATASET = "census_employment"


def _events(n: int) -> list[bytes]:
    """``n`` distinct census data events (the reference file repeated with new ids)."""
    from shared.cli.data import rows_to_events
    from shared.contract import load_contract

    contract = load_contract(ROOT / "contracts" / f"{DATASET}.yaml")
    base = rows_to_events(contract, pq.read_table(DATA))
    out: list[bytes] = []
    for i in range(n):
        event = dict(base[i % len(base)])
        event["event_id"] = str(i)
        out.append(json.dumps(event, separators=(",", ":")).encode())
    return out


async def _produce(bootstrap: str, values: list[bytes]) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=10, max_batch_size=512 * 1024
    )
    await producer.start()
    started = time.perf_counter()
    try:
        for start in range(0, len(values), 5000):
            futures = [
                await producer.send("data.events", v, key=DATASET.encode())
                for v in values[start : start + 5000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def _raw(bootstrap: str, n: int, group: str) -> float:
    """Seconds for a raw getmany + json.loads consumer to read ``n`` messages."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        "data.events",
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        session_timeout_ms=3000,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    try:
        seen = 0
        started = 0.0
        loads = json.loads
        while seen < n:
            fetched = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in fetched.values():
                if records and not started:
                    started = time.perf_counter()
                for r in records:
                    loads(r.value)
                seen += len(records)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def _ingestion(bootstrap: str, n: int, store_dir: str, group: str) -> list[tuple[float, int]]:
    """The ingestion worker turning ``n`` events into acknowledged batches: (seconds
    since its first fetched chunk, rows) of each batch event, in the order seen."""
    from aiokafka import AIOKafkaConsumer

    from services.ingestion.core import Ingestor
    from services.ingestion.metrics import IngestionMetrics
    from services.ingestion.settings import IngestionSettings
    from services.ingestion.worker import IngestionWorker
    from shared.contract import load_contracts
    from shared.events import BatchCreated
    from shared.logging import configure_logging
    from shared.service import Runtime
    from shared.settings import KafkaSettings
    from shared.store import ArtifactStore

    kafka = KafkaSettings(
        bootstrap_servers=bootstrap, session_timeout_ms=3000, heartbeat_interval_ms=300
    )
    # A short window so the tail of the run is not a wait for the time window to close
    # (in a steady stream flushes come from the row count; the window bounds latency).
    settings = IngestionSettings(
        kafka=kafka, store=f"file://{store_dir}", batch_seconds=0.25, group_id=group
    )
    runtime = Runtime("ingestion", configure_logging("bench", "json", "WARNING"))
    ingestor = Ingestor(
        load_contracts(ROOT / "contracts"),
        ArtifactStore(settings.store),
        IngestionMetrics(runtime.registry),
        batch_rows=settings.batch_rows,
        batch_seconds=settings.batch_seconds,
        dedup_window=settings.dedup_window,
    )
    first: list[float] = []
    process = ingestor.process

    def timed_process(messages: Any) -> Any:
        if not first:
            first.append(time.perf_counter())
        return process(messages)

    ingestor.process = timed_process  # type: ignore[method-assign]
    batches = AIOKafkaConsumer(
        "data.batches",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await batches.start()
    worker = IngestionWorker(settings, ingestor, runtime)
    await worker.start()
    try:
        rows = 0
        seen: list[tuple[float, int]] = []
        while rows < n:
            if runtime.failure is not None:
                raise RuntimeError(f"ingestion failed: {runtime.failure!r}")
            fetched = await batches.getmany(timeout_ms=500)
            now = time.perf_counter()
            for records in fetched.values():
                for r in records:
                    batch = BatchCreated.model_validate_json(r.value)
                    if store_dir in batch.uri:  # this round's batches only
                        rows += batch.rows
                        seen.append((now - first[0], batch.rows))
        return seen
    finally:
        await worker.stop()
        await batches.stop()
        await runtime.cancel_tasks()


def run(quick: bool = False) -> dict[str, Any]:
    """Publish, then measure the raw consumer and ingestion on the same messages."""
    from shared.embedded import EmbeddedBroker, free_port
    from shared.kafka import ensure_topics
    from shared.settings import KafkaSettings

    n = 60_000 if quick else 200_000
    rounds = 2 if quick else 3
    values = _events(n)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(free_port()) as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=3)
        asyncio.run(ensure_topics(kafka, ["data.events", "data.events.dlq", "data.batches"]))
        produce_s = asyncio.run(_produce(broker.bootstrap, values))
        raw_rates: list[float] = []
        ingest_rates: list[float] = []
        gaps: list[float] = []
        # Interleaved rounds, so a busy spell on a shared machine hits both alike.
        for r in range(rounds):
            raw_rates.append(n / asyncio.run(_raw(broker.bootstrap, n, f"bench-raw-{r}")))
            store_dir = f"{tmp}/store-{r}"
            seen = asyncio.run(_ingestion(broker.bootstrap, n, store_dir, f"bench-ingestion-{r}"))
            ingest_rates.append(n / seen[-1][0])
            gaps.append(seen[-1][0] - seen[-2][0] if len(seen) > 1 else 0.0)
            batches = len(seen)
    raw_rate = statistics.median(raw_rates)
    ingest_rate = statistics.median(ingest_rates)
    return {
        "quick": quick,
        "events": n,
        "event_bytes_mean": round(sum(map(len, values)) / n, 1),
        "produce_events_per_s": round(n / produce_s),
        "rounds": rounds,
        "raw_getmany_json_loads_per_s": round(raw_rate),
        "ingestion_end_to_end_events_per_s": round(ingest_rate),
        "ratio_ingestion_to_raw": round(ingest_rate / raw_rate, 3),
        "raw_rounds_per_s": [round(x) for x in raw_rates],
        "ingestion_rounds_per_s": [round(x) for x in ingest_rates],
        "last_batch_gap_s": [round(x, 3) for x in gaps],
        "ingestion_batches": batches,
        "load_average_before": [round(x, 2) for x in load_before],
        "cpus": os.cpu_count(),
        "pyarrow": pa.__version__,
    }


def main() -> None:
    """Print the figures and write them to ``bench/results/ingestion.json``."""
    results = run(quick="--quick" in sys.argv)
    print(json.dumps(results, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
