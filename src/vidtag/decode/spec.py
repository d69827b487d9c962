"""What the caller wants back: how many frames, at which size, and how hard to try."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Policy = Literal["fast", "exact"]
Mode = Literal["uniform", "segments", "dense"]
Threading = Literal["gops", "ffmpeg"]


@dataclass(frozen=True)
class SamplingSpec:
    """Temporal sampling of `frames` frames resized to `height` x `width` RGB.

    `mode="uniform"` targets the centres of `frames` equal segments (serving); `"segments"`
    a random point in each segment, drawn from `seed` (TSN/ECO training); `"dense"` `frames`
    consecutive frames from `start` seconds (default: centred), always decoded exactly
    (3D-CNN training clips).

    `policy="fast"` trades temporal accuracy for decode cost: a frame is decoded only if the
    reduction in deviation from the targets (as a fraction of the clip's duration) is worth at
    least `tradeoff` per unit of cost, where one unit is the cost of decoding an average keyframe.
    `budget` caps the total cost in those units and `budget_ms` the estimated decode time on
    the reference core (planner.packet_ms; unbounded by default): keyframes nearest the
    targets are always decoded, extensions and fills only within both caps.
    `policy="exact"` decodes whatever it takes.
    """

    frames: int = 8
    height: int = 160
    width: int = 96
    policy: Policy = "fast"
    tradeoff: float = 0.06
    budget: float = 48.0
    budget_ms: float = float("inf")
    # A target whose nearest frame is taken gets the frame nearest it among the next `fill`
    # usable frames of that GOP (1: the very next frame; more: spread, at more decoding).
    fill: int = 1
    threads: int = 2  # decoders working on independent GOPs at once (1: sequential)
    # "gops": `threads` single-threaded decoders share the GOPs; "ffmpeg": one decoder, GOPs in
    # order, FFmpeg's own frame+slice threading with `threads` threads (for comparison).
    threading: Threading = "gops"
    deblock: bool = True  # False skips the in-loop deblocking filter: ~5 % faster, not bit-exact
    mode: Mode = "uniform"
    seed: int = 0
    start: float | None = None
    # (i, n): decode only the i-th of n groups of the planned GOPs, as one of n decoders in
    # different processes sharing a clip; the result holds that group's frames and their
    # target positions (`DecodedClip.positions`; `vidtag.decode.shares.merge_shares`).
    share: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        if min(self.frames, self.fill, self.threads) < 1 or min(self.height, self.width) < 8:
            raise ValueError(f"invalid sampling spec: {self}")
        if self.policy not in ("fast", "exact"):
            raise ValueError(f"unknown sampling policy {self.policy!r}")
        if self.mode not in ("uniform", "segments", "dense"):
            raise ValueError(f"unknown sampling mode {self.mode!r}")
        if self.threading not in ("gops", "ffmpeg"):
            raise ValueError(f"unknown threading {self.threading!r}")
        if len(self.share) != 2 or not 0 <= self.share[0] < self.share[1]:
            raise ValueError(f"invalid share {self.share!r}: (i, n) with 0 <= i < n")

    def targets(self, duration: float, fps: float = 30.0) -> list[float]:
        """Seconds to sample in [0, duration)."""
        n = self.frames
        if self.mode == "segments":
            offsets = np.random.default_rng(self.seed).random(n)
            return [(j + float(offsets[j])) * duration / n for j in range(n)]
        if self.mode == "dense":
            step = 1.0 / max(fps, 1e-6)
            span = (n - 1) * step
            first = self.start if self.start is not None else (duration - span) / 2
            first = min(max(first, 0.0), max(duration - span - step / 2, 0.0))
            return [first + j * step for j in range(n)]
        return [(j + 0.5) * duration / n for j in range(n)]
