"""gRPC serving: `VidtagServer` (lifecycle), `ServeConfig` (settings), `serve()` (blocking)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vidtag.server.config import ServeConfig

if TYPE_CHECKING:
    from vidtag.server.app import VidtagServer, serve

__all__ = ["ServeConfig", "VidtagServer", "serve"]


def __getattr__(name: str) -> Any:
    # Lazy so that `vidtag --help` (which imports vidtag.server.cli) needs neither grpc nor the
    # generated stubs.
    if name in ("VidtagServer", "serve"):
        from vidtag.server import app

        return getattr(app, name)
    raise AttributeError(name)
