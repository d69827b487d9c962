"""The one place that maps vidtag exceptions to gRPC status codes.

Clients see the reason for errors that are theirs to fix (a bad video, an unknown model); anything
unexpected becomes INTERNAL with a generic message, and only the server log gets the traceback.
"""

from __future__ import annotations

import logging
from typing import Final, NoReturn

import grpc

from vidtag.errors import BackendUnavailable, InvalidVideo, LimitExceeded, ModelError

log = logging.getLogger(__name__)


class RpcFailure(Exception):
    """A failure the server itself decides on (deadline, not ready), with its own status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# First match wins, so a subclass must come before its base (LimitExceeded is an InvalidVideo).
STATUS_TABLE: Final[tuple[tuple[type[BaseException], grpc.StatusCode], ...]] = (
    (LimitExceeded, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidVideo, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelError, grpc.StatusCode.NOT_FOUND),
    (BackendUnavailable, grpc.StatusCode.FAILED_PRECONDITION),
)

INTERNAL_MESSAGE: Final = "internal error; see the server log"
_MAX_DETAIL_CHARS: Final = 1000  # status details travel in a header: keep them short


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Return the status code and client-facing message for `exc`.

    Unmapped exceptions give INTERNAL with a generic message; the caller logs the traceback.
    """
    if isinstance(exc, RpcFailure):
        return exc.code, exc.message
    for cls, code in STATUS_TABLE:
        if isinstance(exc, cls):
            detail = str(exc) or cls.__name__
            if len(detail) > _MAX_DETAIL_CHARS:
                detail = detail[: _MAX_DETAIL_CHARS - 3] + "..."
            return code, detail
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


async def abort_with(
    context: grpc.aio.ServicerContext, exc: BaseException, *, method: str
) -> NoReturn:
    """Abort the RPC with the status `exc` maps to (raises grpc's abort exception)."""
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("unexpected error in %s", method, exc_info=exc)
    await context.abort(code, message)
    raise AssertionError("unreachable: ServicerContext.abort raises")
