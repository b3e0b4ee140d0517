"""``flywheel up``, ``flywheel broker`` and ``flywheel topics``: running the stack."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn

from shared import topics
from shared.cli._output import console, emit
from shared.embedded import EmbeddedBroker
from shared.kafka import consumer_lag, describe_topics, ensure_topics
from shared.procs import SERVICES, ServiceProcess, parse_line
from shared.settings import KafkaSettings

DEFAULT_PORTS = {
    "ingestion": 9101,
    "validation": 9102,
    "training": 9103,
    "serving": 9104,
    "monitoring": 9105,
}


def _stop_event() -> threading.Event:
    """An event set on SIGINT/SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


class Supervisor:
    """Starts every service as its own process and restarts crashed ones with back-off.

    Args:
        names: services to run.
        env: environment for the children.
        log_dir: each service's JSON log goes to ``<log_dir>/<name>.log``.
    """

    MAX_BACKOFF_S = 30.0
    HEALTHY_AFTER_S = 60.0

    def __init__(self, names: list[str], env: dict[str, str], log_dir: Path):
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self._logs = {n: (log_dir / f"{n}.log").open("a", encoding="utf-8") for n in names}
        self._lock = threading.Lock()
        self.procs = {n: ServiceProcess(n, env=env, on_line=self._on_line) for n in names}
        self._backoff = dict.fromkeys(names, 1.0)
        self._restart_at: dict[str, float] = {}
        self._started_at: dict[str, float] = {}
        self.restarts = dict.fromkeys(names, 0)

    def _on_line(self, name: str, line: str) -> None:
        with self._lock:
            self._logs[name].write(line + "\n")
            self._logs[name].flush()
        rec = parse_line(line)
        if rec is None:
            return
        if rec.get("level") in ("error", "critical"):
            console.print(f"[red]{name}[/] {rec.get('event')} {rec.get('error', '')}")

    def start_all(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Start every service, then wait until all are ready; their ready records."""
        for proc in self.procs.values():
            proc.start()
            self._started_at[proc.name] = time.monotonic()
        ready = {}
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console) as bar:
            task = bar.add_task("starting services", total=len(self.procs))
            for name, proc in self.procs.items():
                ready[name] = proc.wait_ready(timeout)
                bar.update(task, advance=1, description=f"{name} ready")
        return ready

    def watch(self) -> None:
        """Restart services that exited, with exponential back-off (one pass)."""
        now = time.monotonic()
        for name, proc in self.procs.items():
            code = proc.returncode
            if code is None:
                if now - self._started_at.get(name, now) > self.HEALTHY_AFTER_S:
                    self._backoff[name] = 1.0
                continue
            due = self._restart_at.get(name)
            if due is None:
                delay = self._backoff[name]
                console.print(f"[yellow]{name} exited with {code}; restarting in {delay:.0f}s[/]")
                self._restart_at[name] = now + delay
                self._backoff[name] = min(delay * 2, self.MAX_BACKOFF_S)
            elif now >= due:
                del self._restart_at[name]
                self.restarts[name] += 1
                proc.start()
                self._started_at[name] = now

    def stop_all(self) -> None:
        """SIGTERM every service in reverse start order."""
        for proc in reversed(list(self.procs.values())):
            proc.terminate()
        for f in self._logs.values():
            f.close()


def up(
    only: Annotated[
        list[str] | None, typer.Option("--service", help="Run only these services.")
    ] = None,
    log_dir: Annotated[Path, typer.Option(help="Folder for service logs.")] = Path("var/logs"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 120.0,
    broker_port: Annotated[int, typer.Option(help="Embedded broker port.")] = 9092,
    demo: Annotated[bool, typer.Option(help="Run the demo once the stack is ready.")] = False,
) -> None:
    """Start the embedded broker (unless KAFKA_BOOTSTRAP_SERVERS is set) and every service."""
    stop = _stop_event()
    kafka = KafkaSettings()
    broker: EmbeddedBroker | None = None
    env: dict[str, str] = {}
    if not kafka.bootstrap_servers:
        broker = EmbeddedBroker(broker_port, log=log_dir / "broker.log")
        broker.start()
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
        console.print(f"embedded broker (Tansu, in memory) on [bold]{broker.bootstrap}[/]")
    names = list(only or SERVICES)
    supervisor = Supervisor(names, env, log_dir)
    try:
        asyncio.run(ensure_topics(kafka, topics.ALL_TOPICS))
        ready = supervisor.start_all(timeout)
        _print_endpoints(kafka.servers, ready)
        if demo:
            _run_demo(kafka, ready, stop)
        console.print("stack running; Ctrl-C stops it")
        while not stop.wait(0.5):
            supervisor.watch()
    finally:
        console.print("stopping services")
        supervisor.stop_all()
        if broker:
            broker.stop()
        console.print("stopped")


def _run_demo(
    kafka: KafkaSettings, ready: dict[str, dict[str, Any]], stop: threading.Event
) -> None:
    from shared.cli.demo import DemoAborted, Endpoints, run_demo
    from shared.settings import ServiceSettings

    settings = ServiceSettings()
    endpoints = Endpoints(
        grpc=str(ready["serving"]["grpc_address"]).replace("0.0.0.0", "127.0.0.1"),
        monitoring_metrics=f"http://127.0.0.1:{ready['monitoring']['metrics_port']}/metrics",
        store=settings.store,
        contracts=settings.contracts,
    )
    try:
        run_demo(kafka, endpoints, stop)
    except DemoAborted as err:
        console.print(f"[yellow]demo stopped: {err}[/]; the stack keeps running")


def _print_endpoints(bootstrap: str, ready: dict[str, dict[str, Any]]) -> None:
    console.print(f"Kafka bootstrap: [bold]{bootstrap}[/]")
    for name, rec in ready.items():
        extra = f"  gRPC {rec['grpc_address']}" if rec.get("grpc_address") else ""
        console.print(
            f"  {name:<11} metrics http://127.0.0.1:{rec.get('metrics_port')}/metrics{extra}"
        )


def broker(
    port: Annotated[int, typer.Option(help="Listener port.")] = 9092,
    host: Annotated[str, typer.Option(help="Listener interface.")] = "127.0.0.1",
) -> None:
    """Start only the embedded broker, until Ctrl-C."""
    stop = _stop_event()
    with EmbeddedBroker(port, host) as b:
        console.print(f"embedded broker (Tansu, in memory) on [bold]{b.bootstrap}[/]")
        stop.wait()


def list_topics(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List topics with their partition counts and consumer-group lag."""
    kafka = KafkaSettings()

    async def gather() -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        return await describe_topics(kafka), await consumer_lag(kafka)

    parts, lag = asyncio.run(gather())
    rows: list[dict[str, Any]] = []
    for name in sorted(parts):
        groups = {g: per[name] for g, per in lag.items() if name in per}
        rows.append({"topic": name, "partitions": parts[name], "lag": groups})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["lag"] = ", ".join(f"{g}={n}" for g, n in row["lag"].items()) or "-"
    emit(rows, ["topic", "partitions", "lag"], False, f"topics on {kafka.servers}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(up)
    app.command()(broker)
    app.command("topics")(list_topics)
