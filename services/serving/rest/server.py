"""The REST server component: OIP v2 (KServe v2 REST) over aiohttp, optional TLS and token auth.

aiohttp runs in the service's own asyncio loop beside ``grpc.aio`` (no thread, no second
loop, no signal handlers of its own: the service's SIGTERM handling drives the drain), and
shares nothing with the gRPC path, which pays nothing for it. Handlers convert (see
:mod:`.convert`) and delegate to the same :class:`DataPlane` as the gRPC servicer; data-plane
errors map to HTTP codes with Triton's ``{"error": "..."}`` body.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..dataplane import PLATFORM, DataPlane
from ..errors import ServingError
from ..extensions import REPOSITORY_CHANGES, model_config, model_statistics, repository_index
from ..grpc.auth import bearer_allowed, load_tokens
from ..inputs import TensorSpec
from ..settings import ServingSettings
from .convert import HEADER_LENGTH, decode_request, encode_json, encode_response

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Largest request body, the same bound as the gRPC server's messages."""
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "UNAVAILABLE": 503, "INTERNAL": 500}
"""Data-plane error codes as HTTP status codes."""
OPEN_PATHS = ("/v2/health/",)
"""Paths served without a bearer token (probes and load balancers)."""
JSON = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode_json(doc), status=status, content_type=JSON)


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def ssl_context(settings: ServingSettings) -> ssl.SSLContext | None:
    """TLS from the same settings as gRPC (client certificates required with a client CA)."""
    if not settings.tls_configured:
        return None
    if not (settings.tls_cert_file and settings.tls_key_file):
        raise ValueError("TLS needs both tls_cert_file and tls_key_file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file:
        context.load_verify_locations(settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": spec.shape}
    if spec.parameters:
        doc["parameters"] = spec.parameters
    return doc


class RestHandlers:
    """The OIP v2 REST endpoints over a data plane.

    Args:
        dataplane: the transport-free core.
        log: a structlog logger.
    """

    def __init__(self, dataplane: DataPlane, log: Any):
        self.dataplane = dataplane
        self.log = log

    def routes(self) -> list[web.RouteDef]:
        """Every endpoint, with and without ``/versions/{version}``."""
        out = [
            web.get("/v2", self.server_metadata),
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2/models/stats", self.statistics),
            web.post("/v2/repository/index", self.repository_index),
            web.post("/v2/repository/models/{name}/load", self.repository_change),
            web.post("/v2/repository/models/{name}/unload", self.repository_change),
        ]
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            out += [
                web.get(base, self.model_metadata),
                web.get(base + "/ready", self.model_ready),
                web.get(base + "/config", self.model_config),
                web.get(base + "/stats", self.statistics),
                web.post(base + "/infer", self.infer),
            ]
        return out

    async def model_config(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version", "")
        try:
            return _json(model_config(self.dataplane, name, version))
        except ServingError as exc:
            return _error(HTTP_STATUS[exc.code], exc.message)

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("name", ""), request.match_info.get("version", "")
        try:
            return _json({"model_stats": model_statistics(self.dataplane, name, version)})
        except ServingError as exc:
            return _error(HTTP_STATUS[exc.code], exc.message)

    async def repository_index(self, request: web.Request) -> web.Response:
        body = await request.read()
        ready = False
        if body.strip():
            try:
                doc = json.loads(body)
            except ValueError:
                return _error(400, "the request is not valid JSON")
            ready = bool(doc.get("ready", False)) if isinstance(doc, dict) else False
        return _json(repository_index(self.dataplane, ready))

    async def repository_change(self, request: web.Request) -> web.Response:
        return _error(501, REPOSITORY_CHANGES)

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.dataplane.ready() else 503)

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version", "")
        return web.Response(status=200 if self.dataplane.model_ready(name, version) else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        name, version, extensions = self.dataplane.server_metadata()
        return _json({"name": name, "version": version, "extensions": list(extensions)})

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version", "")
        try:
            versions, inputs, outputs, params = self.dataplane.model_metadata(name, version)
        except ServingError as exc:
            return _error(HTTP_STATUS[exc.code], exc.message)
        return _json(
            {
                "name": name,
                "versions": versions,
                "platform": PLATFORM,
                "inputs": [_tensor(s) for s in inputs],
                "outputs": [_tensor(s) for s in outputs],
                "parameters": params,
            }
        )

    async def infer(self, request: web.Request) -> web.Response:
        name, version = request.match_info["name"], request.match_info.get("version", "")
        start = time.perf_counter()
        try:
            body = await request.read()
            decoded, plan = decode_request(name, version, body, request.headers.get(HEADER_LENGTH))
            payload, header_length = encode_response(await self.dataplane.infer(decoded), plan)
        except ServingError as exc:
            code, message = exc.code, exc.message
        except Exception as exc:  # never crash the server on a request
            self.log.error("infer.failed", model=name, error=repr(exc), exc_info=exc)
            code, message = "INTERNAL", f"internal error: {type(exc).__name__}"
        else:
            if header_length is None:
                return web.Response(body=payload, content_type=JSON)
            return web.Response(
                body=payload,
                content_type="application/octet-stream",
                headers={HEADER_LENGTH: str(header_length)},
            )
        self.dataplane.failed(name, version, code, time.perf_counter() - start)
        return _error(HTTP_STATUS[code], message)


def token_middleware(tokens: list[str], on_reject: Callable[[], None]) -> Any:
    """Refuses requests without ``Authorization: Bearer <token>`` (401), except health."""
    accepted = [t.encode() for t in tokens]

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(OPEN_PATHS) or bearer_allowed(
            request.headers.get("Authorization"), accepted
        ):
            return await handler(request)
        on_reject()
        return _error(
            401, "missing or unknown bearer token (header 'Authorization: Bearer <token>')"
        )

    return check


class RestServer:
    """Serves the data plane over OIP v2 REST; ``port`` holds the bound port after start.

    Args:
        dataplane: the transport-free core.
        settings: the service settings.
        log: a structlog logger.
    """

    def __init__(self, dataplane: DataPlane, settings: ServingSettings, log: Any):
        self.dataplane = dataplane
        self.settings = settings
        self.log = log
        self.port = settings.http_port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and start serving."""
        inline = self.settings.auth_tokens
        tokens = load_tokens(
            self.settings.auth_tokens_file, inline.get_secret_value() if inline else None
        )
        middlewares = []
        if tokens:
            middlewares.append(token_middleware(tokens, self.dataplane.metrics.auth_failures.inc))
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
        app.add_routes(RestHandlers(self.dataplane, self.log).routes())
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.settings.drain_grace_s
        )
        await runner.setup()
        context = ssl_context(self.settings)
        site = web.TCPSite(
            runner, self.settings.http_host, self.settings.http_port, ssl_context=context
        )
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.log.info(
            "http.listening", port=self.port, tls=context is not None, token_auth=bool(tokens)
        )

    async def stop(self) -> None:
        """Stop accepting requests; in-flight ones get ``drain_grace_s`` to finish."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
