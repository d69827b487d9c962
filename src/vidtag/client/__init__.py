"""Client side: `VidtagClient` (gRPC) and the `vidtag tag` command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vidtag.client.grpc_client import VidtagClient

__all__ = ["VidtagClient"]


def __getattr__(name: str) -> Any:
    # Lazy so that `vidtag tag` without --server never imports grpc or needs generated stubs.
    if name == "VidtagClient":
        from vidtag.client.grpc_client import VidtagClient

        return VidtagClient
    raise AttributeError(name)
