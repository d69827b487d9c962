"""Composition offsets (`ctts`) of one MP4/MOV track, read straight from the box tree.

FFmpeg's mov demuxer already turns the sample tables (stts, stss, stsz, stco/co64, stsc) into
the stream's index entries when the file is opened; only the composition offsets that turn
decode timestamps into presentation timestamps are missing there, so this reads `ctts` (and the
sample count from `stsz`/`stz2`) of the track with the given ID. Fragmented files (moof) have no
sample tables in moov; callers fall back to demuxing.
"""

from __future__ import annotations

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
        head = 16 if struct.unpack_from(">I", moov, 0)[0] == 1 else 8
        for kind, s, e in _boxes(moov, head, len(moov)):
            if kind != b"trak":
                continue
            found = _track(moov, s, e)
            if found is not None and found[0] == track_id and found[1] >= 0:
                return TrackTables(track_id, found[1], found[2], fragmented)
    except (struct.error, ValueError, IndexError):
        return None
    return None
