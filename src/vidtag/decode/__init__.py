"""bytes | path -> sampled, resized RGB frames, reading the packet index before decoding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vidtag.decode.limits import DecodeLimits
from vidtag.decode.result import DecodedClip
from vidtag.decode.spec import SamplingSpec

Backend = Callable[[bytes | str | Path, SamplingSpec, DecodeLimits], DecodedClip]
_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str) -> Callable[[Backend], Backend]:
    def deco(fn: Backend) -> Backend:
        if name in _BACKENDS:
            raise ValueError(f"decode backend {name!r} registered twice")
        _BACKENDS[name] = fn
        return fn

    return deco


def _load_builtin() -> None:
    if "pyav" not in _BACKENDS:
        from vidtag.decode.pyav_backend import sample_pyav

        register_backend("pyav")(sample_pyav)


def backends() -> list[str]:
    _load_builtin()
    return sorted(_BACKENDS)


def sample_frames(
    source: bytes | str | Path,
    spec: SamplingSpec | None = None,
    limits: DecodeLimits | None = None,
    backend: str = "pyav",
) -> DecodedClip:
    """Decode `spec.frames` frames spread over the clip; raises InvalidVideo / LimitExceeded."""
    _load_builtin()
    try:
        fn = _BACKENDS[backend]
    except KeyError:
        raise ValueError(
            f"unknown decode backend {backend!r}; known: {sorted(_BACKENDS)}"
        ) from None
    return fn(source, spec or SamplingSpec(), limits or DecodeLimits())


__all__ = [
    "DecodeLimits",
    "DecodedClip",
    "SamplingSpec",
    "backends",
    "register_backend",
    "sample_frames",
]
