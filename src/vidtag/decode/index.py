"""The packet index (timestamps, keyframe flags, sizes, decode order), built without decoding.

For MP4/MOV the sample tables already are that index: FFmpeg parses them when the file is
opened and `ctts` gives the presentation offsets, so a 30 s clip is not demuxed packet by packet
and only the planned packets are ever read. Other containers get one demux pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from vidtag.decode.limits import DecodeLimits
from vidtag.decode.mp4 import Reader, read_track_tables
from vidtag.errors import InvalidVideo, LimitExceeded

Fetch = Callable[[int], Any]  # decode-order position -> av.Packet


def ffmpeg_packet(data: Any) -> Any:
    """A packet holding a copy of `data` (bytes, or any buffer such as another packet) in a
    buffer FFmpeg owns. `av.Packet(bytes)` lends the bytes object instead, and its buffer's
    last reference is released by taking the GIL: when that reference is a frame-threading
    worker's and the thread holding the GIL is closing or flushing the decoder (it waits for
    the worker), the process deadlocks (seen building a frame cache: one decode process hung
    in `avcodec_free_context`, its worker waiting for the GIL in `av_packet_unref`)."""
    pkt = av.Packet(memoryview(data).nbytes)
    pkt.update(data)
    return pkt


@dataclass
class PacketIndex:
    """Video packets in decode order, described without decoding; `packet(i)` yields one."""

    pts_s: np.ndarray  # presentation time in seconds from the stream start, float64
    origin_s: float  # stream time (seconds) of pts_s == 0: a decoded frame is at pts*tb - origin_s
    is_key: np.ndarray  # bool
    sizes: np.ndarray  # bytes, int64
    duration: float
    fps: float
    width: int  # coded size
    height: int
    codec: str
    source: str  # "tables" (MP4/MOV sample tables, nothing demuxed) or "demux" (one pass)
    fetch: Fetch

    def __len__(self) -> int:
        return len(self.pts_s)

    def packet(self, i: int) -> Any:
        """The av.Packet at decode-order position `i` (pts/dts/time_base set, ready to decode)."""
        return self.fetch(i)

    @property
    def keyframes(self) -> np.ndarray:
        return np.flatnonzero(self.is_key)

    def gop_bounds(self) -> list[tuple[int, int]]:
        """[start, end) packet ranges in decode order, each starting at a keyframe."""
        keys = self.keyframes
        ends = [*keys[1:].tolist(), len(self)]
        return list(zip(keys.tolist(), ends, strict=True))


def _check_header(stream: Any, limits: DecodeLimits) -> tuple[int, int]:
    cc = stream.codec_context
    if cc is None:  # FFmpeg has no decoder for this codec (or the codec ID is unknown)
        raise InvalidVideo("no decoder for the video stream's codec")
    width, height = int(cc.width or 0), int(cc.height or 0)
    if width <= 0 or height <= 0:
        raise InvalidVideo("video stream has no frame size")
    if width * height > limits.max_pixels:
        raise LimitExceeded(
            f"frame size {width}x{height} exceeds the limit of {limits.max_pixels} pixels"
        )
    return width, height


def _finish(
    stream: Any,
    pts_s: np.ndarray,
    is_key: np.ndarray,
    sizes: np.ndarray,
    fetch: Fetch,
    source: str,
    limits: DecodeLimits,
) -> PacketIndex:
    width, height = _check_header(stream, limits)
    origin = float(np.min(pts_s))
    pts_s = pts_s - origin
    # Some muxers flag no keyframe, or not the first packet: decoding still starts there (the
    # planner's GOPs must cover every packet, so the first one always opens a GOP).
    is_key[0] = True
    n = len(pts_s)
    span = float(np.max(pts_s))
    # Every timestamp equal (a zero-duration clip) counts as one frame at the stream's rate.
    frame_dur = span / (n - 1) if n > 1 and span > 0 else 1.0 / float(stream.average_rate or 25)
    duration = span + frame_dur
    if duration > limits.max_duration_s:
        raise LimitExceeded(
            f"duration {duration:.1f} s exceeds the limit of {limits.max_duration_s:.0f} s"
        )
    fps = float(stream.average_rate) if stream.average_rate else n / duration
    return PacketIndex(
        pts_s=pts_s,
        origin_s=origin,
        is_key=is_key,
        sizes=sizes,
        duration=duration,
        fps=fps,
        width=width,
        height=height,
        codec=str(stream.codec_context.name),
        source=source,
        fetch=fetch,
    )


def index_from_tables(
    container: Any, stream: Any, read: Reader, total: int, limits: DecodeLimits
) -> PacketIndex | None:
    """The index of an MP4/MOV video track from its sample tables, reading no packet; None
    where the tables cannot be trusted (fragmented file, edit lists that drop samples, counts
    that disagree), so the caller demuxes instead. Samples past the end of a truncated input
    are left out."""
    if "mp4" not in str(container.format.name) and "mov" not in str(container.format.name):
        return None
    entries = stream.index_entries
    n = len(entries)
    if n == 0:
        return None
    if n > limits.max_packets:
        raise LimitExceeded(f"video has more than {limits.max_packets} frames")
    tables = read_track_tables(read, total, int(stream.id), max_samples=n)
    if tables is None or tables.fragmented or tables.sample_count != n:
        return None
    rows = np.array(
        [(e.timestamp, e.pos, e.size, e.is_keyframe, e.is_discard) for e in entries],
        dtype=np.int64,
    )
    if rows[:, 4].any() or (np.diff(rows[:, 0]) < 0).any():
        return None
    ctts = tables.ctts if tables.ctts is not None else np.zeros(n, dtype=np.int64)
    if len(ctts) != n:
        return None
    dts, pos, size = rows[:, 0], rows[:, 1], rows[:, 2]
    pts = dts + ctts
    inside = np.flatnonzero((pos + size > total) | (pos < 0))
    keep = np.arange(int(inside[0]) if inside.size else n)
    keep = keep[size[keep] > 0]
    if keep.size == 0:
        raise InvalidVideo("video stream has no packets")
    tb = stream.time_base or Fraction(1, 90000)

    def fetch(i: int) -> Any:
        j = int(keep[i])
        pkt = ffmpeg_packet(read(int(pos[j]), int(size[j])))
        pkt.pts, pkt.dts, pkt.time_base = int(pts[j]), int(dts[j]), tb
        pkt.is_keyframe = bool(rows[j, 3])
        return pkt

    # p * num / den rounds like the demuxer's float(p * tb), so both paths agree to the bit.
    pts_s = (pts[keep] * tb.numerator).astype(np.float64) / tb.denominator
    return _finish(
        stream, pts_s, rows[keep, 3].astype(bool), size[keep].copy(), fetch, "tables", limits
    )


def index_by_demux(container: Any, stream: Any, limits: DecodeLimits) -> PacketIndex:
    """Demux every packet of `stream` once and keep them; reject lengths beyond `limits` early."""
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
    return _finish(
        stream,
        pts_arr,
        np.asarray(keys, dtype=bool),
        np.asarray(sizes, dtype=np.int64),
        packets.__getitem__,
        "demux",
        limits,
    )


def build_index(
    container: Any,
    stream: Any,
    limits: DecodeLimits,
    read: Reader | None = None,
    total: int = 0,
) -> PacketIndex:
    """The sample tables where the container has trustworthy ones, else one demux pass."""
    _check_header(stream, limits)  # reject a huge frame header before anything else
    if read is not None:
        index = index_from_tables(container, stream, read, total, limits)
        if index is not None:
            return index
    return index_by_demux(container, stream, limits)
