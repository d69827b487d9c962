"""Explicit bounds on what the decoder accepts; every breach raises LimitExceeded."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeLimits:
    """Input limits. Defaults fit 5–60 s phone clips with a wide margin."""

    max_bytes: int = 64 * 1024 * 1024
    max_duration_s: float = 120.0
    max_pixels: int = 4096 * 2304  # checked on the stream header, before any frame is allocated
    max_packets: int = 20_000  # frames in the video stream (a 120 s clip at 120 fps is 14 400)
    max_decode_s: float = 5.0  # wall time spent decoding one clip
