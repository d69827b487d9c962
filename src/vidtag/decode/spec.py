"""What the caller wants back: how many frames, at which size, and how hard to try."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Policy = Literal["fast", "exact"]


@dataclass(frozen=True)
class SamplingSpec:
    """Uniform temporal sampling of `frames` frames resized to `height` x `width` RGB.

    `policy="fast"` trades temporal accuracy for decode cost: a frame is decoded only if the
    reduction in deviation from the targets (as a fraction of the clip's duration) is worth at
    least `tradeoff` per unit of cost, where one unit is the cost of decoding an average keyframe.
    `budget` caps the total cost in those units. `policy="exact"` decodes whatever it takes.
    """

    frames: int = 8
    height: int = 160
    width: int = 96
    policy: Policy = "fast"
    tradeoff: float = 0.06
    budget: float = 48.0
    threads: int = 2  # decoders working on independent GOPs at once (1: sequential)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.height < 8 or self.width < 8 or self.threads < 1:
            raise ValueError(f"invalid sampling spec: {self}")
        if self.policy not in ("fast", "exact"):
            raise ValueError(f"unknown sampling policy {self.policy!r}")

    def targets(self, duration: float) -> list[float]:
        """Centres of `frames` equal segments of [0, duration)."""
        return [(j + 0.5) * duration / self.frames for j in range(self.frames)]
