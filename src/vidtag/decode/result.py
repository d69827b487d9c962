"""What a decode returns: frames plus an account of how they were obtained."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np

C = TypeVar("C", bound="DecodedClip")


@dataclass(frozen=True)
class DecodedClip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, display orientation
    timestamps: tuple[float, ...]  # seconds actually returned, one per frame
    targets: tuple[float, ...]  # seconds asked for
    frames_decoded: int
    packets_planned: int
    corrupt_packets: int
    mean_deviation: float  # mean |returned - target| in seconds
    width: int  # display size of the source
    height: int
    duration: float
    fps: float
    codec: str
    rotation: int
    keyframes: int
    seconds: float  # wall time of the whole decode, demux included
    # The target position of each frame when this is one share of a clip (SamplingSpec.share);
    # () for a whole clip, whose frames are in target order.
    positions: tuple[int, ...] = ()

    def recast(self, kind: type[C], **changes: Any) -> C:
        """This clip's account as a `kind` (DecodedClip or a subclass) with `changes`, e.g.
        other frames: the fields a subclass adds are not carried."""
        return kind(**{f.name: getattr(self, f.name) for f in fields(DecodedClip)} | changes)
