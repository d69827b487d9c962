"""The packet index: one demux pass, no decoding (timestamps, keyframe flags, sizes, order)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from vidtag.decode.limits import DecodeLimits
from vidtag.errors import InvalidVideo, LimitExceeded


@dataclass
class PacketIndex:
    """Video packets in decode order. Arrays are aligned with `packets`."""

    packets: list[Any]  # av.Packet, kept so decoding needs no second demux or seek
    pts_s: np.ndarray  # presentation time in seconds from the stream start, float64
    origin_s: float  # stream time (seconds) of pts_s == 0: a decoded frame is at pts*tb - origin_s
    is_key: np.ndarray  # bool
    sizes: np.ndarray  # bytes, int64
    duration: float
    fps: float
    width: int  # coded size
    height: int
    codec: str

    def packet(self, i: int) -> Any:
        """The av.Packet at decode-order position `i` (pts/dts/time_base set, ready to decode)."""
        return self.packets[i]

    @property
    def keyframes(self) -> np.ndarray:
        return np.flatnonzero(self.is_key)

    def gop_bounds(self) -> list[tuple[int, int]]:
        """[start, end) packet ranges in decode order, each starting at a keyframe."""
        keys = self.keyframes
        ends = [*keys[1:].tolist(), len(self.packets)]
        return list(zip(keys.tolist(), ends, strict=True))


def build_index(container: Any, stream: Any, limits: DecodeLimits) -> PacketIndex:
    """Demux every packet of `stream`; reject headers and lengths beyond `limits` early."""
    cc = stream.codec_context
    width, height = int(cc.width or 0), int(cc.height or 0)
    if width <= 0 or height <= 0:
        raise InvalidVideo("video stream has no frame size")
    if width * height > limits.max_pixels:
        raise LimitExceeded(
            f"frame size {width}x{height} exceeds the limit of {limits.max_pixels} pixels"
        )
    tb = stream.time_base or Fraction(1, 90000)
    packets: list[Any] = []
    pts: list[float] = []
    keys: list[bool] = []
    sizes: list[int] = []
    try:
        for pkt in container.demux(stream):
            if pkt.size == 0:
                continue
            t = pkt.pts if pkt.pts is not None else pkt.dts
            if len(packets) >= limits.max_packets:
                raise LimitExceeded(f"video has more than {limits.max_packets} frames")
            packets.append(pkt)
            pts.append(float(t * tb) if t is not None else np.nan)
            keys.append(bool(pkt.is_keyframe))
            sizes.append(int(pkt.size))
    except LimitExceeded:
        raise
    except Exception as exc:  # av.error.* on a broken container: keep what was read
        if not packets:
            raise InvalidVideo(f"cannot demux video: {exc}") from exc
    if not packets:
        raise InvalidVideo("video stream has no packets")
    pts_arr = np.asarray(pts, dtype=np.float64)
    if np.isnan(pts_arr).all():
        rate = float(stream.average_rate or 25)
        pts_arr = np.arange(len(packets), dtype=np.float64) / rate
    else:
        # Missing timestamps: place them halfway between neighbours in decode order.
        idx = np.flatnonzero(~np.isnan(pts_arr))
        pts_arr = np.interp(np.arange(len(pts_arr)), idx, pts_arr[idx])
    origin = float(np.min(pts_arr))
    pts_arr = pts_arr - origin
    is_key = np.asarray(keys, dtype=bool)
    if not is_key.any():
        is_key[0] = True  # some muxers flag nothing; decoding from the first packet still works
    n = len(packets)
    span = float(np.max(pts_arr))
    frame_dur = span / max(n - 1, 1) if n > 1 else 1.0 / float(stream.average_rate or 25)
    duration = span + frame_dur
    if duration > limits.max_duration_s:
        raise LimitExceeded(
            f"duration {duration:.1f} s exceeds the limit of {limits.max_duration_s:.0f} s"
        )
    fps = float(stream.average_rate) if stream.average_rate else n / duration
    return PacketIndex(
        packets=packets,
        pts_s=pts_arr,
        origin_s=origin,
        is_key=is_key,
        sizes=np.asarray(sizes, dtype=np.int64),
        duration=duration,
        fps=fps,
        width=width,
        height=height,
        codec=str(cc.name),
    )
