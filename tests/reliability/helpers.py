"""Helpers of the reliability suite: polling with a deadline, metrics, RSS, Kafka reads."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.parquet as pq
import tritonclient.grpc as triton
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from shared.cli.data import rows_to_events
from shared.contract import Contract, load_contract
from shared.datasets import DatasetCatalog
from shared.kafka import consumer_kwargs
from shared.kafka_protocol import fetch_partitions
from shared.procs import ServiceProcess
from shared.settings import KafkaSettings
from tests.conftest import CONTRACTS, need_data

CENSUS: Contract = load_contract(CONTRACTS / "census_employment.yaml")


def report(name: str, **figures: Any) -> None:
    """Print the figures a test measured (collected into docs/reliability.md)."""
    print(f"RELIABILITY {name} " + json.dumps(figures, sort_keys=True))


class Answer(NamedTuple):
    """One successful ModelInfer call: when it was sent and answered, and what it said."""

    sent: float
    answered: float
    ids: list[str]
    version: str


RECONNECT_FAST = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
]
"""tritonclient's message limits, with a reconnect back-off capped at 250 ms."""


class Load:
    """Threads calling ModelInfer in a loop; every outcome recorded with its time."""

    def __init__(self, address: str, inputs: list[triton.InferInput], threads: int = 4):
        self.address = address
        self.inputs = inputs
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok: list[Answer] = []
        self.errors: list[tuple[float, str]] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        # Reconnect at most 250 ms apart once the server is gone: with grpc's default
        # back-off (1 s, x1.6) a client can fail for seconds after a restarted server is
        # listening again, and the test would measure its own back-off.
        client = triton.InferenceServerClient(self.address, channel_args=RECONNECT_FAST)
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                result = client.infer(
                    CENSUS.name, self.inputs, request_id=uuid.uuid4().hex, client_timeout=5
                )
                ids = [i.decode() for i in result.as_numpy("prediction_id")]
                answer = Answer(sent, time.monotonic(), ids, result.get_response().model_version)
                with self.lock:
                    self.ok.append(answer)
            except InferenceServerException as exc:
                with self.lock:
                    self.errors.append((time.monotonic(), str(exc)))
                time.sleep(0.05)  # the server is down: do not spin
        client.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def count(self) -> int:
        """Successful calls so far."""
        with self.lock:
            return len(self.ok)


def census_events(limit: int, offset: int = 0) -> list[dict[str, Any]]:
    """``limit`` census reference rows from ``offset`` as data events."""
    (path,) = need_data("employment_MA_reference.pq")
    return rows_to_events(CENSUS, pq.read_table(path).slice(offset, limit))


def wait_for(cond: Callable[[], Any], timeout: float = 90.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy (eventual outcomes, with a deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def metric(proc: ServiceProcess, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` matching ``labels`` on a service's /metrics (0 if none)."""
    url = f"http://127.0.0.1:{proc.ready_info['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += float(sample.value)
    return total


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def latest_rows(catalog: DatasetCatalog, name: str) -> int:
    """Rows of the latest dataset version of ``name`` (0 before the first)."""
    latest = catalog.latest(name)
    return latest.rows if latest else 0


async def read_topic(
    settings: KafkaSettings, topic: str, *, idle_s: float = 3.0, wait_s: float = 60.0
) -> list[bytes]:
    """Every record value of ``topic`` from the start, until ``idle_s`` without a new one."""
    consumer = AIOKafkaConsumer(**consumer_kwargs(settings, f"reliability-{topic}", None))
    await consumer.start()
    try:
        # an explicit metadata request: the consumer's own metadata has no topic yet on Kafka
        parts = (await fetch_partitions(settings, [topic], wait_s))[topic]
        consumer.assign([TopicPartition(topic, p) for p in parts])
        out: list[bytes] = []
        deadline = time.monotonic() + wait_s
        last = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out.extend(r.value for r in records if r.value is not None)
                last = time.monotonic()
        return out
    finally:
        await consumer.stop()


def json_records(values: list[bytes]) -> list[dict[str, Any]]:
    """Record values parsed as JSON objects."""
    return [json.loads(v) for v in values]
