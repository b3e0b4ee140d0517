"""One way to run a service: build, start in order, report ready, stop in reverse on SIGTERM.

A service is a list of components with ``async start()`` / ``async stop()`` (a
transport-free core plus thin adapters). :func:`run_service` is the whole ``main``:
it configures logging, builds the components, starts them, logs ``service.ready``
(the readiness signal ``flywheel up`` and the tests wait for), and on SIGTERM/SIGINT
stops them in reverse order. A background task that crashes stops the service with
exit code 1 so a supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import structlog
from prometheus_client import CollectorRegistry

from shared.contract import ContractError, load_contracts
from shared.logging import configure_logging
from shared.metrics import MetricsServer
from shared.settings import ServiceSettings

READY_EVENT = "service.ready"


class Component(Protocol):
    """Anything a service starts and stops."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Runtime:
    """What a service's builder gets: registry, logger, readiness info, task supervision."""

    def __init__(self, name: str, log: structlog.stdlib.BoundLogger):
        self.name = name
        self.log = log
        self.registry = CollectorRegistry()
        self.info: dict[str, Any] = {}
        """Extra fields for the ready line (endpoints, ports)."""
        self.stopping = asyncio.Event()
        self.failure: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; if it fails, the service stops with exit code 1."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.failure is None:
            self.log.error("task.crashed", task=task.get_name(), error=repr(exc), exc_info=exc)
            self.failure = exc
            self.stopping.set()

    async def cancel_tasks(self) -> None:
        """Cancel every background task and wait for them."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


S = TypeVar("S", bound=ServiceSettings)
Builder = Callable[[S, Runtime], Awaitable[list[Component]]]


async def serve(name: str, settings: S, build: Builder[S], log: Any) -> int:
    """Build, start, wait for a stop signal, stop. Returns the exit code."""
    runtime = Runtime(name, log)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.stopping.set)
    metrics = MetricsServer(runtime.registry, settings.metrics_port, settings.metrics_host)
    started: list[Component] = []
    try:
        await metrics.start()
        started.append(metrics)
        for component in await build(settings, runtime):
            if runtime.stopping.is_set():
                break
            await component.start()
            started.append(component)
        if not runtime.stopping.is_set():
            loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
            log.info(READY_EVENT, metrics_port=metrics.port, event_loop=loop_kind, **runtime.info)
            await runtime.stopping.wait()
    except Exception as exc:
        log.error("service.failed", error=repr(exc), exc_info=exc)
        runtime.failure = runtime.failure or exc
    finally:
        log.info("service.stopping")
        for component in reversed(started):
            try:
                await component.stop()
            except Exception as exc:  # keep stopping the rest
                log.error(
                    "component.stop_failed", component=type(component).__name__, error=repr(exc)
                )
        await runtime.cancel_tasks()
        log.info("service.stopped")
    return 1 if runtime.failure else 0


BAD_CONTRACT_EXIT = 2
"""Exit code of a service refused to start by a bad contract (a restart cannot help)."""


def run_service(name: str, settings: S, build: Builder[S]) -> int:
    """The ``main`` of a service: logging, the event loop, exit code.

    A bad contract stops it before anything starts: the one-line ``<file>: <field>:
    <what>`` error on stderr (and in the log), exit code :data:`BAD_CONTRACT_EXIT`.
    """
    log = configure_logging(name, settings.log_format, settings.log_level)
    try:
        load_contracts(settings.contracts)
    except ContractError as err:
        log.error("service.bad_contract", error=str(err))
        print(f"error: {err}", file=sys.stderr)
        return BAD_CONTRACT_EXIT
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        return runner.run(serve(name, settings, build, log))


def loop_factory(settings: ServiceSettings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop constructor ``settings.event_loop`` names (None: asyncio's default)."""
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None
