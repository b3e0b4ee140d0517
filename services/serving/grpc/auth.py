"""Bearer-token authentication for the gRPC server.

With tokens configured, every call needs ``authorization: Bearer <token>`` metadata,
except liveness/readiness, the gRPC health service and reflection, which stay open so
probes and load balancers work without secrets.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

OPEN_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def load_tokens(file: str | None, inline: str | None) -> list[str]:
    """Tokens from a file (one per line, ``#`` comments) and a comma-separated string."""
    tokens: list[str] = []
    if file:
        for line in Path(file).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                tokens.append(line)
    if inline:
        tokens.extend(t.strip() for t in inline.split(",") if t.strip())
    return tokens


def bearer_allowed(header: str | bytes | None, tokens: Iterable[bytes]) -> bool:
    """Whether an ``authorization`` value is ``Bearer <one of tokens>`` (gRPC and REST)."""
    if header is None:
        return False
    text = header.decode() if isinstance(header, bytes) else str(header)
    scheme, _, token = text.partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = token.strip().encode()
    # compare_digest against every token: no timing hint of which one is close
    return any([hmac.compare_digest(given, t) for t in tokens])


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects calls without a known bearer token with UNAUTHENTICATED.

    Args:
        tokens: the accepted tokens.
        on_reject: called once per refused call (metrics).
    """

    def __init__(self, tokens: Iterable[str], on_reject: Callable[[], None]):
        self.tokens = [t.encode() for t in tokens]
        if not self.tokens:
            raise ValueError("token auth needs at least one token")
        self.on_reject = on_reject

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown bearer token (metadata 'authorization: Bearer <token>')",
            )

        async def deny_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await deny(None, context)
            yield  # pragma: no cover - abort raised

        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_stream_rpc_method_handler(deny_stream)

    def _allowed(self, metadata: Iterable[tuple[str, Any]]) -> bool:
        for key, value in metadata:
            if key == "authorization":
                return bearer_allowed(value, self.tokens)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method in OPEN_METHODS or method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        if self._allowed(details.invocation_metadata or ()):
            return await continuation(details)
        self.on_reject()
        if details.method.endswith("/ModelStreamInfer"):
            return self._deny_stream
        return self._deny
