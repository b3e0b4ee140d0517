"""Assembles the serving service from its settings.

Start order: prediction producer and publisher, then the model manager (watcher
positioned at the end of ``models.deployments``, then the registry's champions and
challengers loaded, then the watcher applying events), then the gRPC and REST servers -
so the ports only open once the models are loaded and warm, and readiness turns on once
both listen. Stop runs in reverse: readiness off, drain, servers, models, publisher.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.contract import load_contracts
from shared.registry import Registry
from shared.service import Component, Runtime
from shared.signing import load_key
from shared.store import ArtifactStore

from .dataplane import DataPlane
from .events import PredictionPublisher
from .grpc.server import GrpcServer
from .kafka import TOPICS, DeploymentWatcher, PredictionSink
from .metrics import ServingMetrics
from .repository import ModelRepository
from .rest.server import RestServer
from .settings import ServingSettings


class ModelManager:
    """Start-up loading and deployment watching, as one component.

    Args:
        repository: the loaded models.
        watcher: the ``models.deployments`` consumer.
        runtime: the service runtime (task supervision).
    """

    def __init__(self, repository: ModelRepository, watcher: DeploymentWatcher, runtime: Runtime):
        self.repository = repository
        self.watcher = watcher
        self.runtime = runtime
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Pin the deployment offsets, load from the registry, then follow deployments."""
        await self.watcher.position()
        await self.repository.load_from_registry()
        self._task = self.runtime.spawn(self.watcher.run(), "deployment-watcher")

    async def stop(self) -> None:
        """Stop following deployments and drain the batchers."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.watcher.stop()
        await self.repository.close()


class Publisher:
    """The prediction producer and the buffer that feeds it, as one component."""

    def __init__(self, sink: PredictionSink, publisher: PredictionPublisher):
        self.sink = sink
        self.publisher = publisher

    async def start(self) -> None:
        """Connect the producer, then start publishing."""
        await self.sink.start()
        await self.publisher.start()

    async def stop(self) -> None:
        """Publish what is buffered, then disconnect."""
        await self.publisher.stop()
        await self.sink.stop()


async def build(settings: ServingSettings, runtime: Runtime) -> list[Component]:
    """The service's components, in start order."""
    log = runtime.log
    metrics = ServingMetrics(runtime.registry)
    contracts = load_contracts(settings.contracts)
    registry = Registry(ArtifactStore(settings.store))
    deploy_key = load_key(settings)
    if deploy_key is None:
        log.warning("deploy_key.missing", effect="every deployment event is refused")
    repository = ModelRepository(
        contracts,
        registry,
        metrics,
        log,
        max_batch_size=settings.max_batch_size,
        batch_max_delay_s=settings.batch_max_delay_ms / 1000.0,
        intra_op_threads=settings.ort_intra_op_threads,
        deploy_key=deploy_key,
    )
    sink = PredictionSink(settings.kafka)

    def dropped(model: str, rows: int) -> None:
        metrics.events_dropped.labels(model).inc(rows)

    def published(model: str, rows: int) -> None:
        metrics.events_published.labels(model).inc(rows)

    def waited(model: str, seconds: float) -> None:
        metrics.event_wait.labels(model).observe(seconds)

    publisher = PredictionPublisher(
        sink.send,
        partitions=sink.partitions,
        buffer_rows=settings.event_buffer_rows,
        batch_rows=settings.event_batch_rows,
        block_s=settings.event_block_ms / 1000.0,
        linger_s=settings.producer_linger_ms / 1000.0,
        dropped=dropped,
        published=published,
        waited=waited,
        log=log,
    )

    def invalid() -> None:
        metrics.deployments.labels("_unknown", "_unknown", "invalid").inc()
        metrics.deployment_refusals.labels("_unknown", "malformed").inc()

    watcher = DeploymentWatcher(settings.kafka, repository.apply, invalid, log)
    dataplane = DataPlane(repository, publisher, metrics, settings.server_name)
    servers = Endpoints(
        GrpcServer(dataplane, settings, log),
        RestServer(dataplane, settings, log),
        settings,
        runtime,
    )
    runtime.info["topics"] = list(TOPICS)
    components: list[Any] = [Publisher(sink, publisher), ModelManager(repository, watcher, runtime)]
    components.append(servers)
    return components


class Endpoints:
    """The gRPC and REST servers, readiness and the graceful drain, as one component.

    Start: both servers listen, then readiness turns on (ServerReady, gRPC health
    SERVING, ``/v2/health/ready`` 200) and the addresses go into the ready record. Stop
    (SIGTERM): readiness turns off first, the servers keep answering for
    ``drain_delay_s`` (load balancers and the readiness probe take the replica out), then
    both stop accepting while requests in flight get ``drain_grace_s`` to finish; the
    batchers and the prediction publisher stop after (reverse start order).
    """

    def __init__(
        self, grpc: GrpcServer, rest: RestServer, settings: ServingSettings, runtime: Runtime
    ):
        self.grpc = grpc
        self.rest = rest
        self.settings = settings
        self.runtime = runtime

    def _address(self, host: str, port: int) -> str:
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = self.settings.advertised_host
        return f"{host}:{port}"

    async def start(self) -> None:
        await self.grpc.start(ready=False)
        await self.rest.start()
        await self.grpc.set_ready(True)
        self.runtime.info["grpc_address"] = self._address(self.settings.grpc_host, self.grpc.port)
        self.runtime.info["http_address"] = self._address(self.settings.http_host, self.rest.port)
        self.runtime.info["grpc_server"] = self.settings.grpc_implementation
        self.runtime.info["models"] = {
            name: [s.model.version for s in slot.versions()]
            for name, slot in self.grpc.dataplane.repository.slots.items()
        }

    async def stop(self) -> None:
        await self.grpc.set_ready(False)
        self.runtime.log.info(
            "serving.draining",
            delay_s=self.settings.drain_delay_s,
            grace_s=self.settings.drain_grace_s,
        )
        if self.settings.drain_delay_s:
            await asyncio.sleep(self.settings.drain_delay_s)
        await asyncio.gather(self.grpc.stop(), self.rest.stop())
        self.runtime.log.info("serving.drained")
