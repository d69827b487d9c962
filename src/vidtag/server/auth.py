"""Optional bearer-token authentication for the VideoTagger service.

Every `vidtag.v1.VideoTagger` call must carry `authorization: Bearer <token>` metadata matching
one of the configured tokens, else it is refused with UNAUTHENTICATED before any work. Health
checking and reflection stay open, so orchestrator probes need no secret. Tokens are compared in
constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)
PROTECTED_PREFIX = "/vidtag.v1.VideoTagger/"


def read_tokens(path: Path) -> tuple[str, ...]:
    """Tokens in a file, one per line (blank lines and `#` comments ignored)."""
    tokens = tuple(
        t for t in (line.strip() for line in path.read_text().splitlines()) if t and t[0] != "#"
    )
    if not tokens:
        raise ValueError(f"{path}: no token in the file")
    return tokens


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses VideoTagger calls without a valid bearer token (see module doc)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        if not self._tokens:
            raise ValueError("token authentication needs at least one token")

    def _allowed(self, metadata: Iterable[tuple[str, Any]]) -> bool:
        for key, value in metadata:
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else str(value)
                scheme, _, token = text.partition(" ")
                if scheme.lower() != "bearer":
                    return False
                given = token.strip().encode()
                return any(hmac.compare_digest(given, t) for t in self._tokens)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if not method.startswith(PROTECTED_PREFIX) or self._allowed(
            handler_call_details.invocation_metadata or ()
        ):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        message = "missing or invalid bearer token (metadata 'authorization: Bearer <token>')"

        async def deny_unary(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def deny_stream(requests: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        if handler is not None and handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                deny_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            deny_unary,
            request_deserializer=handler.request_deserializer if handler else None,
            response_serializer=handler.response_serializer if handler else None,
        )
