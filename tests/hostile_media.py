"""Hostile media for tests, made from good clips: surgery on MP4 files (find boxes, overwrite
fields, replace a box's payload fixing the sizes of the boxes around it, rewrite the frame size an
H.264 SPS declares, remux into fragments) and streams with odd metadata."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Boxes whose payload is a list of boxes, and where that list starts inside the payload.
_CHILDREN_AT = {
    b"moov": 0,
    b"trak": 0,
    b"mdia": 0,
    b"minf": 0,
    b"stbl": 0,
    b"edts": 0,
    b"dinf": 0,
    b"moof": 0,
    b"traf": 0,
    b"stsd": 8,  # version/flags, entry count
    b"avc1": 78,  # visual sample entry fields
    b"avc3": 78,
    b"hvc1": 78,
    b"hev1": 78,
}


@dataclass(frozen=True)
class Box:
    kind: bytes
    path: str  # "moov/trak/mdia/..."
    start: int  # offset of the size field
    payload: int  # offset of the payload
    end: int
    parents: tuple[int, ...]  # start offsets of the enclosing boxes, outermost first


def boxes(data: bytes) -> list[Box]:
    """Every box of the file (containers above descended into), in file order."""
    out: list[Box] = []

    def walk(start: int, end: int, path: str, parents: tuple[int, ...]) -> None:
        pos = start
        while pos + 8 <= end:
            size, kind = struct.unpack_from(">I4s", data, pos)
            head = 8
            if size == 1:
                size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
            elif size == 0:
                size = end - pos
            if size < head or pos + size > end:
                return
            name = f"{path}/{kind.decode('latin-1')}" if path else kind.decode("latin-1")
            box = Box(kind, name, pos, pos + head, pos + size, parents)
            out.append(box)
            if kind in _CHILDREN_AT:
                walk(box.payload + _CHILDREN_AT[kind], box.end, name, (*parents, pos))
            pos += size

    walk(0, len(data), "", ())
    return out


def find(data: bytes, path: str) -> list[Box]:
    """The boxes at `path` (e.g. "moov/trak/mdia/minf/stbl/stsz"), in file order."""
    return [b for b in boxes(data) if b.path == path]


def video_stbl(data: bytes, box: str) -> Box:
    """Box `box` (e.g. "stsz") of the first video track's sample table."""
    traks = find(data, "moov/trak")
    for trak in traks:
        inside = [b for b in boxes(data) if trak.start in b.parents]
        if any(b.kind == b"vmhd" for b in inside):
            return next(b for b in inside if b.path.endswith(f"stbl/{box}"))
    raise LookupError("no video track")


def put(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """`data` with struct `fmt` (big-endian) written at `offset`."""
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, *values)
    return bytes(buf)


def replace_payload(data: bytes, box: Box, payload: bytes) -> bytes:
    """`data` with `box`'s payload replaced, its size and its parents' sizes adjusted (32-bit
    sizes only). Offsets in stco/co64 are not moved: only use on boxes after the media data
    (PyAV writes moov last unless asked for faststart)."""
    delta = len(payload) - (box.end - box.payload)
    buf = bytearray(data[: box.payload] + payload + data[box.end :])
    for start in (*box.parents, box.start):
        (size,) = struct.unpack_from(">I", buf, start)
        assert size > 1, "64-bit box sizes are not handled"
        struct.pack_into(">I", buf, start, size + delta)
    return bytes(buf)


# ---------------------------------------------------------------- H.264 SPS


class _Bits:
    def __init__(self, data: bytes) -> None:
        self.bits = "".join(f"{b:08b}" for b in data)
        self.pos = 0

    def u(self, n: int) -> int:
        v = int(self.bits[self.pos : self.pos + n], 2)
        self.pos += n
        return v

    def ue(self) -> int:
        zeros = 0
        while self.bits[self.pos] == "0":
            zeros += 1
            self.pos += 1
        return self.u(zeros + 1) - 1

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _ue_bits(v: int) -> str:
    code = f"{v + 1:b}"
    return "0" * (len(code) - 1) + code


def _unescape(ebsp: bytes) -> bytes:
    return ebsp.replace(b"\x00\x00\x03", b"\x00\x00")


def _escape(rbsp: bytes) -> bytes:
    out = bytearray()
    zeros = 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def sps_with_size(nal: bytes, width: int, height: int) -> bytes:
    """An SPS NAL unit (header byte included, no start code) declaring `width` x `height`
    (multiples of 16, progressive); every other field is kept."""
    r = _Bits(_unescape(nal[1:]))
    profile = r.u(8)
    r.u(16)  # constraint flags, level
    r.ue()  # seq_parameter_set_id
    if profile in HIGH_PROFILES:
        if r.ue() == 3:  # chroma_format_idc
            r.u(1)
        r.ue()
        r.ue()  # bit depths
        r.u(1)
        if r.u(1):
            raise NotImplementedError("SPS with scaling matrices")
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1)
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    head = r.bits[: r.pos]
    r.ue()
    r.ue()  # the old size, in macroblocks
    if not r.u(1):
        raise NotImplementedError("interlaced SPS")
    rest = "1" + r.bits[r.pos :].rstrip("0")  # frame_mbs_only_flag .. rbsp_stop_one_bit
    bits = head + _ue_bits(width // 16 - 1) + _ue_bits(height // 16 - 1) + rest
    bits += "0" * (-len(bits) % 8)
    rbsp = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    return nal[:1] + _escape(rbsp)


def mp4_with_sps_size(data: bytes, width: int, height: int) -> bytes:
    """An H.264 MP4 whose avcC SPS declares `width` x `height`, while the sample entry (avc1)
    and the track header keep the real size."""
    (avcc,) = [b for b in boxes(data) if b.kind == b"avcC"]
    p = data[avcc.payload : avcc.end]
    assert p[5] & 0x1F == 1, "one SPS expected"
    (n,) = struct.unpack_from(">H", p, 6)
    sps = sps_with_size(p[8 : 8 + n], width, height)
    new = p[:6] + struct.pack(">H", len(sps)) + sps + p[8 + n :]
    return replace_payload(data, avcc, new)


def mp4_with_entry_size(data: bytes, width: int, height: int) -> bytes:
    """An H.264 MP4 whose sample entry (avc1) and track header claim `width` x `height`; the
    SPS keeps the real size."""
    (avc1,) = [b for b in boxes(data) if b.kind == b"avc1"]
    data = put(data, avc1.payload + 24, ">HH", width, height)
    for tkhd in find(data, "moov/trak/tkhd"):
        if struct.unpack_from(">I", data, tkhd.end - 8)[0]:  # a visual track has a size
            data = put(data, tkhd.end - 8, ">II", width << 16, height << 16)
    return data


def mp4_claiming_samples(data: bytes, count: int) -> bytes:
    """An MP4 whose video track's tables claim `count` samples of one constant size, all in
    its first chunk, each one tick long: what a 20-byte `stsz` can say."""
    stsz = video_stbl(data, "stsz")
    (size,) = struct.unpack_from(">I", data, stsz.payload + 12)  # the first sample's size
    data = replace_payload(data, stsz, struct.pack(">IIII", 0, size, count, 0)[:12])
    data = replace_payload(data, video_stbl(data, "stts"), struct.pack(">IIII", 0, 1, count, 1))
    stsc = struct.pack(">IIIII", 0, 1, 1, count, 1)
    return replace_payload(data, video_stbl(data, "stsc"), stsc)


def rename(data: bytes, box: Box, kind: bytes = b"free") -> bytes:
    """`data` with `box` turned into a box of type `kind` (b"free": readers skip it)."""
    return data[: box.start + 4] + kind + data[box.start + 8 :]


def mp4_zero_duration(data: bytes) -> bytes:
    """An MP4 whose video samples all sit at time 0: movie, track and media durations 0, one
    `stts` entry of duration 0, no composition offsets and no edit list."""
    stts = video_stbl(data, "stts")
    (count,) = struct.unpack_from(">I", data, video_stbl(data, "stsz").payload + 8)
    data = replace_payload(data, stts, struct.pack(">IIII", 0, 1, count, 0))
    for b in boxes(data):
        if b.kind in (b"mvhd", b"mdhd", b"tkhd"):
            v1 = data[b.payload] == 1
            # duration: after creation/modification times (+ timescale, + track ID/reserved)
            at = {b"mvhd": (24, 16), b"mdhd": (24, 16), b"tkhd": (28, 20)}[b.kind][0 if v1 else 1]
            data = put(data, b.payload + at, ">Q" if v1 else ">I", 0)
    for kind in (b"ctts", b"edts"):
        for b in [b for b in boxes(data) if b.kind == kind]:
            data = rename(data, b)
    return data


def video_samples(data: bytes) -> tuple[list[int], list[int]]:
    """(file offset, size) of every video sample, for files whose video is one chunk."""
    stco = video_stbl(data, "stco")
    (chunks,) = struct.unpack_from(">I", data, stco.payload + 4)
    assert chunks == 1, "one chunk expected"
    (start,) = struct.unpack_from(">I", data, stco.payload + 8)
    stsz = video_stbl(data, "stsz")
    (n,) = struct.unpack_from(">I", data, stsz.payload + 8)
    sizes = list(struct.unpack_from(f">{n}I", data, stsz.payload + 12))
    offsets = [start + sum(sizes[:i]) for i in range(n)]
    return offsets, sizes


def mp4_with_inband_sps(data: bytes, sample: int, width: int, height: int) -> bytes:
    """An H.264 MP4 (video in one chunk, moov after mdat) whose sample `sample` starts with an
    in-band SPS declaring `width` x `height` (and the PPS again, which binds it), while avcC
    keeps the real size."""
    (avcc,) = [b for b in boxes(data) if b.kind == b"avcC"]
    p = data[avcc.payload : avcc.end]
    (n,) = struct.unpack_from(">H", p, 6)
    nal = sps_with_size(p[8 : 8 + n], width, height)
    assert p[8 + n] == 1, "one PPS expected"
    (m,) = struct.unpack_from(">H", p, 9 + n)
    pps = p[11 + n : 11 + n + m]
    insert = struct.pack(">I", len(nal)) + nal + struct.pack(">I", len(pps)) + pps
    offsets, _ = video_samples(data)
    stsz = video_stbl(data, "stsz")
    entry = stsz.payload + 12 + 4 * sample
    (size,) = struct.unpack_from(">I", data, entry)
    data = put(data, entry, ">I", size + len(insert))
    (mdat,) = find(data, "mdat")
    (mdat_size,) = struct.unpack_from(">I", data, mdat.start)
    data = put(data, mdat.start, ">I", mdat_size + len(insert))
    at = offsets[sample]
    return data[:at] + insert + data[at:]


def mp4_with_display_angle(data: bytes, degrees: float) -> bytes:
    """An MP4 whose video track header's display matrix rotates by `degrees`."""
    import math

    for tkhd in find(data, "moov/trak/tkhd"):
        if struct.unpack_from(">I", data, tkhd.end - 8)[0]:  # the visual track
            m = tkhd.payload + (52 if data[tkhd.payload] == 1 else 40)
            a = round(math.cos(math.radians(degrees)) * 65536)
            b = round(math.sin(math.radians(degrees)) * 65536)
            data = put(data, m, ">ii", a, b)
            data = put(data, m + 12, ">ii", -b, a)
    return data


def mp4_with_keyframes(data: bytes, keyframes: list[int]) -> bytes:
    """An MP4 whose video `stss` lists `keyframes` (1-based sample numbers)."""
    payload = struct.pack(f">II{len(keyframes)}I", 0, len(keyframes), *keyframes)
    return replace_payload(data, video_stbl(data, "stss"), payload)


def mp4_with_ctts_run(data: bytes, run: int) -> bytes:
    """An MP4 whose first composition-offset entry claims a run of `run` samples."""
    return put(data, video_stbl(data, "ctts").payload + 8, ">I", run)


def fragmented(data: bytes) -> bytes:
    """The video of an MP4 remuxed into a fragmented MP4 (empty moov, one moof per GOP)."""
    import io

    import av

    buf = io.BytesIO()
    with (
        av.open(io.BytesIO(data)) as src,
        av.open(buf, "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov"}) as out,
    ):
        stream = out.add_stream_from_template(src.streams.video[0])
        for pkt in src.demux(src.streams.video[0]):
            if pkt.dts is not None:
                pkt.stream = stream
                out.mux(pkt)
    return buf.getvalue()


def fragment_claiming_samples(data: bytes, count: int) -> bytes:
    """A fragmented MP4 whose last `trun` claims `count` samples and carries no per-sample
    fields (flags: data offset only), so the claim costs no bytes: found by fuzzing, FFmpeg
    indexed 83886086 such samples in 3 GB."""
    trun = [b for b in boxes(data) if b.kind == b"trun"][-1]
    return put(data, trun.payload, ">II", 0x000001, count)


def unwrap(data: bytes, box: Box) -> bytes:
    """`data` with `box`'s header turned into an empty `free` box, so that its children sit
    at the level `box` was at (e.g. a moof's traf at the top level)."""
    assert box.payload - box.start == 8
    return put(data, box.start, ">I4s", 8, b"free")


def mpeg2_with_colour_matrix(matrix: int, frames: int = 10) -> bytes:
    """An MPEG-2 program stream whose sequence display extension names colour matrix
    `matrix` (e.g. a reserved value: FFmpeg hands it on to the frames as their colorspace)."""
    import io
    from fractions import Fraction

    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mpeg") as out:
        stream = out.add_stream("mpeg2video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        cc = stream.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc = matrix, 1, 1
        for i in range(frames):
            img = np.full((48, 64, 3), 20 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


# Found by fuzzing (fuzz/fuzz_decode.py, a "slow unit"): a mangled fragmented MP4 whose moov
# holds a moof, a trak and a trun. FFmpeg's mov demuxer spent ~0.7 s of CPU on it while opening
# (a loop over the int range in its fragment index), once per copy of the bytes [1014, 1883).
_MOOF_IN_MOOV = (
    "eNpjYGBQSSupLMgszs9lYGBiANFAbAbERollyYa5H0yuMTEwGObm55cxMDDklBQlZjPAwX8gYH4BZjKCEQKgcDD5Dgx4"
    "AdBKxhtQu2JKsjNSgDQzHtNJsxdEGIElQ3JTMhOBDIXcFLAdSMAATIYeAVO6GSk5RTCZssyUVGSVYUB+vkdiXkpOKkgN"
    "o3xuZl4akCFSlgs2FNkJKikQOZmUotQ0JCfylBblKEDZ94tLknKA9OTikuIUJDXNoAjBGQAOQBd7AGkPgkEEAxL//4O8"
    "BjTVmdHXgev/QwaxdCD9ZpEtByi0wcSBiok6GxgZWDLO8Z8AKhYoLikpRjICyC9ORuKLAPlVaNYA1STnI/E1cstSK0Bh"
    "XlIEpmGORXdwUmlKCShuonJTwTQIKCLHAzDuihILCnKQNelm5hSXAGnVlSX5IEtlUxLBmsGG+ySWpZlZ6Bka6RkagOJ/"
    "ATBVgyJBIDctAzmgO4ApDySuUgIRt0S47j/pYD+xCpl+MTCwgBL6HEaIbSKgHIAWLB4lRaV5DAxcrEA2GxCvYAILM89h"
    "YMisSE2JByYrWwOF3NT4osSi1JyczGIgz2KQ5migK0YzGWmZTHlIZDILU3pnsv+jmWxEVZvnqJSlGcnO1mBV6KkLAFD4"
    "6cw="
)


def moof_in_moov(copies: int = 1) -> bytes:
    """The fuzz input above, its second moov repeated `copies` times (cost grows with it)."""
    import base64
    import zlib

    data = zlib.decompress(base64.b64decode(_MOOF_IN_MOOV))
    return data[:1014] + data[1014:1883] * copies + data[1883:]
