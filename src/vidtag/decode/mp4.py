"""Composition offsets (`ctts`) of one MP4/MOV track, read straight from the box tree.

FFmpeg's mov demuxer already turns the sample tables (stts, stss, stsz, stco/co64, stsc) into
the stream's index entries when the file is opened; only the composition offsets that turn
decode timestamps into presentation timestamps are missing there, so this reads `ctts` (and the
sample count from `stsz`/`stz2`) of the track with the given ID. Fragmented files (moof) have no
sample tables in moov; callers fall back to demuxing.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

# Boxes whose payload is a list of child boxes (the path to stbl).
CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}
MAX_MOOV = 64 * 1024 * 1024

Reader = Callable[[int, int], bytes]  # (offset, size) -> bytes (shorter at end of input)


@dataclass(frozen=True)
class TrackTables:
    track_id: int
    sample_count: int
    ctts: np.ndarray | None  # int64 composition offset per sample, None when the box is absent
    fragmented: bool


def _boxes(buf: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in buf[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, pos)
        head = 8
        if size == 1:
            if pos + 16 > end:
                return
            size = struct.unpack_from(">Q", buf, pos + 8)[0]
            head = 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            return
        yield kind, pos + head, pos + size
        pos += size


def _top_level(read: Reader, total: int) -> tuple[bytes | None, bool]:
    """The moov box (whole) and whether a moof box exists, walking top-level box headers."""
    pos, moov, fragmented = 0, None, False
    while pos + 8 <= total:
        head = read(pos, 16)
        if len(head) < 8:
            break
        size, kind = struct.unpack_from(">I4s", head, 0)
        if size == 1 and len(head) >= 16:
            size = struct.unpack_from(">Q", head, 8)[0]
        elif size == 0:
            size = total - pos
        if size < 8:
            break
        if kind == b"moov" and moov is None:
            if size > MAX_MOOV:
                return None, fragmented
            moov = read(pos, size)
        elif kind == b"moof":
            fragmented = True
        pos += size
    return moov, fragmented


def _header_size(box: bytes) -> int:
    return 16 if struct.unpack_from(">I", box, 0)[0] == 1 else 8


def _ctts(buf: bytes, start: int, end: int) -> np.ndarray:
    version = buf[start]
    (n,) = struct.unpack_from(">I", buf, start + 4)
    n = min(n, (end - start - 8) // 8)
    pairs = np.frombuffer(buf, dtype=">u4", count=2 * n, offset=start + 8).reshape(n, 2)
    counts = pairs[:, 0].astype(np.int64)
    offsets = pairs[:, 1].astype(np.int64)
    if version == 1:  # signed offsets
        offsets = np.where(offsets >= 2**31, offsets - 2**32, offsets)
    return np.repeat(offsets, counts)


def _track(buf: bytes, start: int, end: int) -> tuple[int, int, np.ndarray | None] | None:
    track_id, count, ctts = -1, -1, None
    for kind, s, e in _boxes(buf, start, end):
        if kind == b"tkhd":
            version = buf[s]
            track_id = int(struct.unpack_from(">I", buf, s + (20 if version == 1 else 12))[0])
        elif kind in CONTAINERS:
            inner = _track(buf, s, e)
            if inner is not None:
                _, c, t = inner
                count = c if c >= 0 else count
                ctts = t if t is not None else ctts
        elif kind == b"ctts":
            ctts = _ctts(buf, s, e)
        elif kind in (b"stsz", b"stz2"):  # the sample count sits at the same offset in both
            count = int(struct.unpack_from(">I", buf, s + 8)[0])
    return track_id, count, ctts


def read_track_tables(read: Reader, total: int, track_id: int) -> TrackTables | None:
    """Tables of track `track_id`, or None when the input has no usable moov for it."""
    moov, fragmented = _top_level(read, total)
    if moov is None:
        return None
    try:
        for kind, s, e in _boxes(moov, _header_size(moov), len(moov)):
            if kind != b"trak":
                continue
            found = _track(moov, s, e)
            if found is not None and found[0] == track_id and found[1] >= 0:
                return TrackTables(track_id, found[1], found[2], fragmented)
    except (struct.error, ValueError, IndexError):
        return None
    return None


def isobmff_rotation(read: Reader, total: int, track: int) -> int | None:
    """Counter-clockwise display rotation (0/90/180/270, PyAV's `frame.rotation` convention) of
    the video track from the `tkhd` matrix of an MP4/MOV; None if there is no such track.

    `track` is the stream index (FFmpeg's mov demuxer makes one stream per `trak`, in order).
    Flips and the `mvhd` matrix are ignored, as the `pyav` backend ignores them.
    """
    moov, _ = _top_level(read, total)
    if moov is None:
        return None
    tracks: list[tuple[bytes, float]] = []
    for kind, s, e in _boxes(moov, _header_size(moov), len(moov)):
        if kind != b"trak":
            continue
        handler, angle = b"", 0.0
        for sub, ss, se in _boxes(moov, s, e):
            if sub == b"tkhd" and se - ss >= 84:
                m = ss + 4 + (32 if moov[ss] == 1 else 20) + 16  # version 1 has 64-bit times
                a, b = struct.unpack_from(">ii", moov, m)
                # FFmpeg's av_display_rotation_get: -atan2(b, a), what PyAV reports.
                angle = -math.degrees(math.atan2(b, a)) if a or b else 0.0
            elif sub == b"mdia":
                for leaf, ls, le in _boxes(moov, ss, se):
                    if leaf == b"hdlr" and le - ls >= 12:
                        handler = moov[ls + 8 : ls + 12]
        tracks.append((handler, angle))
    video = [t for t in tracks if t[0] == b"vide"]
    if not video:
        return None
    _, angle = tracks[track] if track < len(tracks) and tracks[track][0] == b"vide" else video[0]
    return round(angle / 90.0) * 90 % 360
