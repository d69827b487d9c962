"""Composition offsets (`ctts`) of one MP4/MOV track, read straight from the box tree.

FFmpeg's mov demuxer already turns the sample tables (stts, stss, stsz, stco/co64, stsc) into
the stream's index entries when the file is opened; only the composition offsets that turn
decode timestamps into presentation timestamps are missing there, so this reads `ctts` (and the
sample count from `stsz`/`stz2`) of the track with the given ID. Fragmented files (moof) have no
sample tables in moov; callers fall back to demuxing.

`sample_counts` runs before FFmpeg sees any input: the demuxer allocates (and fills) one index
entry per sample a table claims when the file is opened, so a few bytes claiming 10^8 samples
would cost gigabytes before any limit of ours could look at the stream. It walks every input as
boxes, whatever its first bytes: FFmpeg's probe skips unknown leading boxes, so a gate on the
first box type would let a bomb through behind one. Non-MP4 data ends the walk at once (its
first "box" is malformed or runs past the end).
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
# Samples a composition-offset table may expand to when the caller names no bound.
MAX_SAMPLES = 1 << 20

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


def _ctts(buf: bytes, start: int, end: int, max_samples: int) -> np.ndarray:
    """The per-sample offsets; ValueError when the run lengths add up to more than
    `max_samples` (each is a 32-bit count from the input: expanding them unchecked is an
    allocation of up to 32 GiB per entry)."""
    version = buf[start]
    (n,) = struct.unpack_from(">I", buf, start + 4)
    n = max(0, min(n, (end - start - 8) // 8))
    pairs = np.frombuffer(buf, dtype=">u4", count=2 * n, offset=start + 8).reshape(n, 2)
    counts = pairs[:, 0].astype(np.int64)
    if int(counts.sum()) > max_samples:
        raise ValueError(f"ctts describes {int(counts.sum())} samples, more than {max_samples}")
    offsets = pairs[:, 1].astype(np.int64)
    if version == 1:  # signed offsets
        offsets = np.where(offsets >= 2**31, offsets - 2**32, offsets)
    return np.repeat(offsets, counts)


def _track(
    buf: bytes, start: int, end: int, max_samples: int
) -> tuple[int, int, np.ndarray | None] | None:
    track_id, count, ctts = -1, -1, None
    for kind, s, e in _boxes(buf, start, end):
        if kind == b"tkhd":
            version = buf[s]
            track_id = int(struct.unpack_from(">I", buf, s + (20 if version == 1 else 12))[0])
        elif kind in CONTAINERS:
            inner = _track(buf, s, e, max_samples)
            if inner is not None:
                _, c, t = inner
                count = c if c >= 0 else count
                ctts = t if t is not None else ctts
        elif kind == b"ctts":
            ctts = _ctts(buf, s, e, max_samples)
        elif kind in (b"stsz", b"stz2"):  # the sample count sits at the same offset in both
            count = int(struct.unpack_from(">I", buf, s + 8)[0])
    return track_id, count, ctts


def read_track_tables(
    read: Reader, total: int, track_id: int, max_samples: int = MAX_SAMPLES
) -> TrackTables | None:
    """Tables of track `track_id`, or None when the input has no usable moov for it, or a
    table of any track describes more than `max_samples` samples."""
    moov, fragmented = _top_level(read, total)
    if moov is None:
        return None
    try:
        for kind, s, e in _boxes(moov, _header_size(moov), len(moov)):
            if kind != b"trak":
                continue
            found = _track(moov, s, e, max_samples)
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


# ---------------------------------------------------------------- sample counts, before FFmpeg

MAX_BOXES = 1 << 17  # box headers the count walk reads; a real 120 s clip has far fewer
# Boxes FFmpeg's mov demuxer parses as lists of boxes, wherever they appear: its parse table is
# flat, so a `traf` at the top level, or a `trun` inside `udta`, is read like any other.
_FFMPEG_CONTAINERS = {
    b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"mvex", b"moof", b"traf",
    b"udta", b"meta",
}  # fmt: skip


# Where the boxes that build FFmpeg's index must sit (b"": the top level). FFmpeg parses them
# anywhere; found by fuzzing, a moof inside a moov cost ~0.7 s of CPU per copy (a scan over
# the int range in its fragment index), so any number of copies meant any number of seconds.
_PLACE = {
    b"moov": b"", b"moof": b"", b"trak": b"moov", b"mvex": b"moov", b"traf": b"moof",
    b"tfhd": b"traf", b"tfdt": b"traf", b"trun": b"traf",
}  # fmt: skip


class MalformedMP4(ValueError):
    """The box structure breaks ISO/IEC 14496-12 in a way FFmpeg would not reject."""


@dataclass(frozen=True)
class TrackCount:
    """What FFmpeg's index of one track will hold: `samples` entries (sample tables of moov
    plus every `trun` of every moof). `handler` is the hdlr type (b"vide", b"soun", ...;
    b"" for a track seen only in fragments)."""

    track_id: int
    handler: bytes
    samples: int


def _box_headers(
    read: Reader, start: int, end: int, budget: list[int]
) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in [start, end), reading only headers; a box
    running past `end` (a truncated file) is clipped there and ends the walk."""
    pos = start
    while pos + 8 <= end:
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError(f"the input has more than {MAX_BOXES} MP4 boxes")
        head = read(pos, 16)
        if len(head) < 8:
            return
        size, kind = struct.unpack_from(">I4s", head, 0)
        hs = 8
        if size == 1:
            if len(head) < 16:
                return
            size, hs = struct.unpack_from(">Q", head, 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < hs:
            return
        yield kind, pos + hs, min(pos + size, end)
        if pos + size >= end:
            return
        pos += size


def _u32(read: Reader, offset: int) -> int | None:
    b = read(offset, 4)
    return int(struct.unpack(">I", b)[0]) if len(b) == 4 else None


@dataclass
class _Tally:
    """One trak being walked."""

    track_id: int = -1
    handler: bytes = b""
    table_samples: int = 0  # stsz/stz2
    pcm: bool = False  # FFmpeg indexes this track's tables by chunk, not by sample


def sample_counts(read: Reader, total: int) -> list[TrackCount]:
    """Per track, how many index entries FFmpeg's mov demuxer will allocate and fill for it,
    read from box headers and a few fields (no table is loaded): the `stsz`/`stz2` sample
    count and the sample counts of every `trun`.

    Walked the way FFmpeg parses: container boxes are descended wherever they sit, a sample
    table box belongs to the last `trak` opened, a `trun` to the track its `tfhd` names (-1
    when none did). A sound track timed in single samples (one `stts` entry of duration 1: raw
    PCM) counts 0 for its tables, as FFmpeg indexes it by chunk. Raises MalformedMP4 when a
    movie or fragment box sits where the format does not allow it (see _PLACE), ValueError on
    more than MAX_BOXES boxes."""
    budget = [MAX_BOXES]
    traks: list[_Tally] = []
    fragments: dict[int, int] = {}
    frag_track = [-1]

    def walk(start: int, end: int, parent: bytes) -> None:
        for kind, s, e in _box_headers(read, start, end, budget):
            t = traks[-1] if traks else None
            if _PLACE.get(kind, parent) != parent:
                where = f"inside '{parent.decode('latin-1')}'" if parent else "at the top level"
                raise MalformedMP4(f"misplaced MP4 box '{kind.decode('latin-1')}' {where}")
            if kind in _FFMPEG_CONTAINERS:
                if kind == b"trak":
                    traks.append(_Tally())
                elif kind == b"traf":
                    frag_track[0] = -1
                walk(s + (4 if kind == b"meta" else 0), e, kind)  # meta is a full box
            elif kind == b"tfhd":
                frag_track[0] = _u32(read, s + 4) or -1
            elif kind == b"trun":
                n = _u32(read, s + 4) or 0
                fragments[frag_track[0]] = fragments.get(frag_track[0], 0) + n
            elif t is None:
                continue  # FFmpeg ignores sample tables before any track
            elif kind == b"tkhd":
                t.track_id = _u32(read, s + (20 if read(s, 1) == b"\x01" else 12)) or -1
            elif kind == b"hdlr" and parent == b"mdia":
                t.handler = read(s + 8, 4)
            elif kind in (b"stsz", b"stz2"):
                t.table_samples = _u32(read, s + 8) or 0
            elif kind == b"stts":
                entries, first_delta = _u32(read, s + 4), _u32(read, s + 12)
                t.pcm = t.handler == b"soun" and entries == 1 and first_delta == 1

    walk(0, total, b"")
    out: list[TrackCount] = []
    for t in traks:
        n = (0 if t.pcm else t.table_samples) + fragments.pop(t.track_id, 0)
        out.append(TrackCount(t.track_id, t.handler, n))
    out += [TrackCount(tid, b"", n) for tid, n in fragments.items()]
    return out
