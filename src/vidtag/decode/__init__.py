"""bytes | path -> sampled, resized RGB frames, reading the packet index before decoding."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from vidtag.decode.limits import DecodeLimits
from vidtag.decode.result import DecodedClip
from vidtag.decode.source import Input
from vidtag.decode.spec import SamplingSpec
from vidtag.registry import Registry

Backend = Callable[[Input, SamplingSpec, DecodeLimits], DecodedClip]
BACKENDS: Registry[Backend] = Registry("decode backend")
register_backend = BACKENDS.register


# Backends with optional dependencies: their module is imported on first use, so importing
# vidtag.decode never imports cv2, torch or PyNvVideoCodec. A missing package raises
# vidtag.errors.BackendUnavailable when the backend is called.
_LAZY_BACKENDS = {
    "opencv": ("vidtag.decode.opencv_backend", "sample_opencv"),
    "nvdec": ("vidtag.decode.nvdec_backend", "sample_nvdec"),
}


def _lazy(module: str, attr: str) -> Backend:
    def backend(source: Input, spec: SamplingSpec, limits: DecodeLimits) -> DecodedClip:
        run: Backend = getattr(importlib.import_module(module), attr)
        return run(source, spec, limits)

    backend.__name__ = backend.__qualname__ = attr
    return backend


def _load_builtin() -> None:
    if "pyav" not in BACKENDS:
        from vidtag.decode.pyav_backend import sample_pyav

        register_backend("pyav")(sample_pyav)
    for name, (module, attr) in _LAZY_BACKENDS.items():
        if name not in BACKENDS:
            register_backend(name)(_lazy(module, attr))


def backends() -> list[str]:
    _load_builtin()
    return BACKENDS.names()


def sample_frames(
    source: Input,
    spec: SamplingSpec | None = None,
    limits: DecodeLimits | None = None,
    backend: str = "pyav",
) -> DecodedClip:
    """Decode `spec.frames` frames spread over the clip; raises InvalidVideo / LimitExceeded."""
    _load_builtin()
    return BACKENDS.get(backend)(source, spec or SamplingSpec(), limits or DecodeLimits())


__all__ = [
    "DecodeLimits",
    "DecodedClip",
    "SamplingSpec",
    "backends",
    "register_backend",
    "sample_frames",
]
