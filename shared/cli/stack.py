"""``flywheel up``, ``flywheel broker`` and ``flywheel topics``: running the stack."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from aiokafka.errors import KafkaError
from rich.progress import Progress, SpinnerColumn, TextColumn

from shared import topics
from shared.cli._output import console, emit, err_console
from shared.embedded import EmbeddedBroker
from shared.kafka import consumer_lag, describe_topics, ensure_topics
from shared.procs import SERVICES, ServiceProcess, parse_line
from shared.settings import KafkaSettings
from shared.signing import STACK_KEY_FILE, generate_key

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


class NothingStarts(Exception):
    """No service can start (every one keeps failing before it is ready)."""


class Supervisor:
    """Starts every service as its own process and restarts failed ones with back-off.

    A service that exits (before or after it was ready) or is not ready within the
    start timeout is restarted after a delay that doubles on each failure up to
    ``MAX_BACKOFF_S`` and resets once it has run for ``HEALTHY_AFTER_S``; the others
    keep running meanwhile. Only when no service has ever become ready and each has
    failed ``GIVE_UP_AFTER`` starts in a row does :meth:`watch` raise
    :class:`NothingStarts`.

    Args:
        names: services to run.
        env: environment for the children.
        log_dir: each service's JSON log goes to ``<log_dir>/<name>.log``.
        start_timeout_s: how long a (re)started service may take to become ready.
    """

    MAX_BACKOFF_S = 30.0
    HEALTHY_AFTER_S = 60.0
    GIVE_UP_AFTER = 3

    def __init__(
        self, names: list[str], env: dict[str, str], log_dir: Path, start_timeout_s: float = 120.0
    ):
        self.log_dir = log_dir
        self.start_timeout_s = start_timeout_s
        log_dir.mkdir(parents=True, exist_ok=True)
        self._logs = {n: (log_dir / f"{n}.log").open("a", encoding="utf-8") for n in names}
        self._lock = threading.Lock()
        self.procs = {n: ServiceProcess(n, env=env, on_line=self._on_line) for n in names}
        self._backoff = dict.fromkeys(names, 1.0)
        self._restart_at: dict[str, float] = {}
        self._started_at: dict[str, float] = {}
        self._announced: set[str] = set()
        self.failures = dict.fromkeys(names, 0)
        """Consecutive failed starts per service (reset once it is ready)."""
        self.ever_ready: set[str] = set()
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

    def _start(self, name: str) -> None:
        self.procs[name].start()
        self._started_at[name] = time.monotonic()

    def start_all(self) -> dict[str, dict[str, Any]]:
        """Start every service and wait (up to the start timeout) for each to be ready.

        Returns the ready records of the services that became ready; the others are
        left to :meth:`watch`, which restarts them with back-off.
        """
        for name in self.procs:
            self._start(name)
        ready = {}
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console) as bar:
            task = bar.add_task("starting services", total=len(self.procs))
            deadline = time.monotonic() + self.start_timeout_s
            for name, proc in self.procs.items():
                try:
                    ready[name] = proc.wait_ready(max(0.0, deadline - time.monotonic()))
                except (TimeoutError, RuntimeError):
                    bar.update(task, advance=1, description=f"{name} failed to start")
                    last = proc.last_error()
                    console.print(
                        f"[yellow]{name} failed to start[/]" + (f": {last}" if last else ""),
                        highlight=False,
                    )
                    continue
                self._became_ready(name)
                bar.update(task, advance=1, description=f"{name} ready")
        return ready

    def _became_ready(self, name: str) -> None:
        self.ever_ready.add(name)
        self.failures[name] = 0
        self._announced.add(name)

    def watch(self) -> None:
        """One pass: note readiness, restart failed services when their back-off is due.

        Raises:
            NothingStarts: no service ever became ready and each failed
                ``GIVE_UP_AFTER`` starts in a row.
        """
        now = time.monotonic()
        for name, proc in self.procs.items():
            code = proc.returncode
            if code is None:
                started = self._started_at.get(name, now)
                if proc.ready and name not in self._announced:
                    self._became_ready(name)
                    console.print(f"[green]{name} ready[/] (after {self.restarts[name]} restarts)")
                elif not proc.ready and now - started > self.start_timeout_s:
                    console.print(f"[yellow]{name} not ready in {self.start_timeout_s:.0f}s[/]")
                    proc.terminate()  # counted as a failed start below, on the next pass
                elif now - started > self.HEALTHY_AFTER_S:
                    self._backoff[name] = 1.0
                continue
            due = self._restart_at.get(name)
            if due is None:
                if name not in self._announced:
                    self.failures[name] += 1
                self._announced.discard(name)
                delay = self._backoff[name]
                last = proc.last_error()
                console.print(
                    f"[yellow]{name} exited with {code}; restarting in {delay:.0f}s[/]"
                    + (f" ({last})" if last else "")
                )
                self._restart_at[name] = now + delay
                self._backoff[name] = min(delay * 2, self.MAX_BACKOFF_S)
            elif now >= due:
                del self._restart_at[name]
                self.restarts[name] += 1
                self._start(name)
        if not self.ever_ready and all(n >= self.GIVE_UP_AFTER for n in self.failures.values()):
            reasons = "; ".join(
                f"{name}: {proc.last_error() or 'exited'}" for name, proc in self.procs.items()
            )
            raise NothingStarts(f"no service could start ({reasons})")

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
    broker_wait: Annotated[
        float, typer.Option(min=1.0, help="Seconds to wait for the Kafka broker to answer.")
    ] = 30.0,
) -> None:
    """Start the embedded broker (unless KAFKA_BOOTSTRAP_SERVERS is set) and every service.

    A service that fails to start or crashes is restarted with back-off while the others
    keep running. It exits 2 with a one-line reason when nothing can start: no broker
    answering at the bootstrap address within ``--broker-wait``, or every service
    failing its first starts.
    """
    check_contracts()
    stop = _stop_event()
    kafka = KafkaSettings()
    broker: EmbeddedBroker | None = None
    env: dict[str, str] = {}
    if not kafka.bootstrap_servers:
        broker = EmbeddedBroker(broker_port, log=log_dir / "broker.log")
        try:
            broker.start()
        except (RuntimeError, TimeoutError, OSError) as err:
            _give_up(f"cannot start the embedded broker: {err}")
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
        console.print(f"embedded broker (Tansu, in memory) on [bold]{broker.bootstrap}[/]")
    try:
        asyncio.run(_prepare_broker(kafka, broker_wait))
    except (ConnectionError, TimeoutError, KafkaError) as err:
        if broker:
            broker.stop()
        why = str(err) or "no answer"
        _give_up(f"no usable Kafka broker at {kafka.servers} after {broker_wait:.0f}s: {why}")
    if not (os.environ.get("FLYWHEEL_DEPLOY_KEY") or os.environ.get("FLYWHEEL_DEPLOY_KEY_FILE")):
        # One key per stack, shared by every service and by the CLI beside it.
        env["FLYWHEEL_DEPLOY_KEY_FILE"] = str(generate_key(STACK_KEY_FILE).resolve())
    names = list(only or SERVICES)
    supervisor = Supervisor(names, env, log_dir, timeout)
    failed: NothingStarts | None = None
    try:
        ready = supervisor.start_all()
        _print_endpoints(kafka.servers, ready)
        if demo and {"serving", "monitoring"} <= set(ready):
            _run_demo(kafka, ready, stop)
        elif demo:
            console.print("[yellow]demo skipped: serving and monitoring are not both ready[/]")
        console.print("stack running; Ctrl-C stops it")
        while not stop.wait(0.5):
            supervisor.watch()
    except NothingStarts as err:
        failed = err
    finally:
        console.print("stopping services")
        supervisor.stop_all()
        if broker:
            broker.stop()
        console.print("stopped")
    if failed is not None:
        _give_up(str(failed))


async def _prepare_broker(kafka: KafkaSettings, wait_s: float) -> None:
    """Create every topic, retrying until the broker answers or ``wait_s`` passes.

    aiokafka logs each refused connection; the one line after the deadline says it all.
    """
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    retry_delay_s = 0.5
    attempts = max(1, int(wait_s / retry_delay_s))
    await asyncio.wait_for(
        ensure_topics(kafka, topics.ALL_TOPICS, attempts=attempts, retry_delay_s=retry_delay_s),
        wait_s,
    )


def _give_up(reason: str) -> NoReturn:
    """Print ``reason`` as one line on stderr and exit 2."""
    from rich.markup import escape

    one_line = " ".join(reason.split())
    err_console.print(f"[red]error:[/] {escape(one_line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def check_contracts() -> None:
    """Exit 2 with the one-line ``<file>: <field>: <what>`` errors if a contract is bad,
    before anything starts (each service would refuse it the same way)."""
    from rich.markup import escape

    from shared.contract import ContractError, load_contracts
    from shared.service import BAD_CONTRACT_EXIT
    from shared.settings import ServiceSettings

    try:
        load_contracts(ServiceSettings().contracts)
    except ContractError as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(BAD_CONTRACT_EXIT) from None


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
