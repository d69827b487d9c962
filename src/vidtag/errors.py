"""Typed errors; the server maps each class to one gRPC status code."""

from __future__ import annotations


class VidtagError(Exception):
    """Base class of every error vidtag raises on purpose."""


class InvalidVideo(VidtagError):
    """The input is not a video we can decode (maps to INVALID_ARGUMENT)."""


class LimitExceeded(InvalidVideo):
    """The input breaks a configured limit: bytes, duration, pixels, frames or time."""


class BackendUnavailable(VidtagError):
    """A decode backend's optional package or device is missing here (maps to
    FAILED_PRECONDITION: the request is fine, this server cannot serve it)."""


class ModelError(VidtagError):
    """A model artifact is missing, malformed or fails its checks."""


class DatasetError(VidtagError):
    """A training or evaluation set that cannot be used (no clip of it decodes, say)."""
