"""NVDEC backend: the `pyav` backend's index and plan, decoded on the GPU with PyNvVideoCodec.

CPU side (no GPU needed): PyAV opens the container, `build_index` and `plan_frames` choose the
packets exactly as in the `pyav` backend, and `planned_access_units` turns each planned GOP prefix
into the elementary stream NVDEC parses: Annex B (start codes, parameter sets in front of the
keyframe) for H.264/HEVC, packets as they are for VP9/AV1.

GPU side: `NvdecDecoderPool` keeps one NVDEC session per (thread, codec, bit depth) and
reconfigures it for each clip's size instead of creating a session per clip (session creation
costs ~280 ms). Each GOP's units are fed, then an empty packet flushes it. Only the chosen frames
are touched: NV12 is area-resized, converted to RGB and rotated in torch on the session's CUDA
stream, the stream the decoder writes on. `sample_nvdec_cuda` returns a (T, 3, H, W) tensor on
the GPU; `sample_nvdec` (the registered backend) copies it to a (T, H, W, 3) uint8 numpy array.

Needs the optional packages PyNvVideoCodec and torch, and a CUDA device; a missing one raises
BackendUnavailable when the backend is called, never at import.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import av
import av.bitstream
import numpy as np

from vidtag.decode.h264_sps import parse_sps
from vidtag.decode.index import PacketIndex, ffmpeg_packet
from vidtag.decode.limits import DecodeLimits
from vidtag.decode.mp4 import isobmff_rotation
from vidtag.decode.planner import Plan, plan_frames, served_frames
from vidtag.decode.pyav_backend import indexed
from vidtag.decode.result import DecodedClip
from vidtag.decode.shares import empty_share, share_plan
from vidtag.decode.source import Input, Source
from vidtag.decode.spec import SamplingSpec
from vidtag.errors import BackendUnavailable, InvalidVideo, LimitExceeded

NVDEC_CODECS = {"h264": "H264", "hevc": "HEVC", "vp9": "VP9", "av1": "AV1"}
_ANNEXB_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
_PARAMETER_SETS = {"h264": frozenset({7, 8}), "hevc": frozenset({32, 33, 34})}  # (VPS,) SPS, PPS
_IDR_NAL_TYPES = {"h264": frozenset({5}), "hevc": frozenset({19, 20})}  # IDR (_W_RADL, _N_LP)
_VCL_NAL_TYPES = {"h264": frozenset(range(1, 6)), "hevc": frozenset(range(32))}  # slices
# 4:2:0 formats NVDEC returns as NV12 (8 bit) or P016 (10/12 bit, MSB-aligned), by bit depth.
_420_FORMATS = {
    "yuv420p": 8,
    "yuvj420p": 8,
    "nv12": 8,
    "yuv420p10le": 10,
    "p010le": 10,
    "yuv420p12le": 12,
}
# Kr, Kb of the YUV -> RGB matrix by AVColorSpace value; anything else gets BT.601 (what
# swscale, and so the `pyav` backend, assumes for untagged video).
_KR_KB = {1: (0.2126, 0.0722), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
_BT601 = (0.299, 0.114)
DEFAULT_MAX_SIZE = 1920  # sessions cover 1920x1920 coded frames (landscape and portrait 1080p)


# ---------------------------------------------------------------------------------------------
# CPU side: elementary stream


class AccessUnit(NamedTuple):
    """One packet as NVDEC is fed it."""

    data: bytes
    pts_s: float  # presentation time on the index's timeline
    is_key: bool
    packet: int  # decode-order index in the PacketIndex (passed to NVDEC as its timestamp)


@dataclass(frozen=True)
class GopUnits:
    """The planned prefix of one GOP, in decode order, starting at its keyframe."""

    start: int
    units: tuple[AccessUnit, ...]
    corrupt: int = 0  # packets the bitstream filter rejected (left out of `units`)
    # Starts with an instantaneous decoder refresh (H.264/HEVC IDR; every VP9/AV1 keyframe):
    # nothing decoded before it is referenced after it, so no flush is needed in front of it.
    idr: bool = True


def stream_codec(stream: Any) -> str:
    """The codec's canonical FFmpeg name ("av1", where the CPU decoder may be "libdav1d")."""
    return str(stream.codec_context.codec.canonical_name)


def nvdec_codec(codec: str) -> str:
    """The PyNvVideoCodec `cudaVideoCodec` member name for a PyAV codec name."""
    try:
        return NVDEC_CODECS[codec]
    except KeyError:
        raise InvalidVideo(f"codec {codec} not supported by NVDEC") from None


def _nal_starts(data: bytes) -> Iterator[int]:
    """Offsets of the NAL unit payloads of an Annex B buffer, found lazily (3- and 4-byte
    start codes): a caller that stops early does not scan the slice data behind them."""
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        yield i + 3
        i = data.find(b"\x00\x00\x01", i + 3)


def _start_code_split(data: bytes) -> Iterator[bytes]:
    """NAL unit payloads of an Annex B buffer (3- and 4-byte start codes)."""
    starts = _nal_starts(data)
    s = next(starts, None)
    while s is not None:
        end = next(starts, None)
        if end is None:
            yield data[s:]
        else:  # a 4-byte start code leaves a zero byte behind the NAL
            yield data[s : end - 3].rstrip(b"\x00")
        s = end


def _empty_nal(data: bytes, s: int) -> bool:
    """Whether the NAL unit at payload offset `s` is empty by `_start_code_split`'s rule: only
    zero bytes before the next start code (or nothing at all), read without slicing."""
    p = s
    while p < len(data) and data[p] == 0:
        p += 1
    return s >= len(data) or (p - s >= 2 and p < len(data) and data[p] == 1)


def _nal_type(codec: str, nal: bytes) -> int:
    return nal[0] & 0x1F if codec == "h264" else (nal[0] >> 1) & 0x3F  # H.264 / HEVC header


def nal_types(codec: str, data: bytes, *, until_slice: bool = False) -> list[int]:
    """NAL unit types, in order, of an Annex B H.264 or HEVC access unit; `until_slice`: up to
    and including the first slice (VCL) NAL unit, which every parameter set of the unit
    precedes and whose type says IDR or not, without scanning the picture data."""
    if codec not in _PARAMETER_SETS:
        raise ValueError(f"no NAL units in {codec}")
    slices = _VCL_NAL_TYPES[codec]
    types: list[int] = []
    for s in _nal_starts(data):
        if _empty_nal(data, s):
            continue
        types.append(_nal_type(codec, data[s : s + 1]))
        if until_slice and types[-1] in slices:
            break
    return types


def _length_prefixed(buf: bytes, pos: int, count: int) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    for _ in range(count):
        if pos + 2 > len(buf):
            break
        (n,) = struct.unpack_from(">H", buf, pos)
        out.append(buf[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out, pos


def parameter_sets(codec: str, extradata: bytes | None) -> bytes:
    """The stream's parameter sets as Annex B: from avcC/hvcC, or picked out of extradata that
    is already Annex B; b"" for other codecs or without extradata."""
    if codec not in _PARAMETER_SETS or not extradata:
        return b""
    ed = bytes(extradata)
    nals: list[bytes]
    if ed.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        nals = list(_start_code_split(ed))
    elif codec == "h264" and len(ed) >= 7 and ed[0] == 1:
        sps, pos = _length_prefixed(ed, 6, ed[5] & 0x1F)
        pps, _ = _length_prefixed(ed, pos + 1, ed[pos] if pos < len(ed) else 0)
        nals = sps + pps
    elif codec == "hevc" and len(ed) >= 23 and ed[0] == 1:
        nals, pos = [], 23
        for _ in range(ed[22]):
            if pos + 3 > len(ed):
                break
            (count,) = struct.unpack_from(">H", ed, pos + 1)
            units, pos = _length_prefixed(ed, pos + 3, count)
            nals += units
    else:
        return b""
    keep = _PARAMETER_SETS[codec]
    return b"".join(
        b"\x00\x00\x00\x01" + n
        for n in nals
        if n and nal_types(codec, b"\x00\x00\x01" + n)[0] in keep
    )


def _leb128(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for k in range(8):
        if pos + k >= len(buf):
            break
        b = buf[pos + k]
        value |= (b & 0x7F) << (7 * k)
        if not b & 0x80:
            return value, k + 1
    return value, 8


def av1_obu_types(data: bytes) -> list[int]:
    """OBU types of an AV1 temporal unit in low-overhead (size-field) format."""
    types: list[int] = []
    pos = 0
    while pos < len(data):
        header = data[pos]
        types.append((header >> 3) & 0xF)
        pos += 1 + ((header >> 2) & 1)
        if not (header >> 1) & 1:  # no size field: the OBU runs to the end
            break
        size, n = _leb128(data, pos)
        pos += n + size
    return types


def _copy_packet(pkt: Any, is_key: bool) -> Any:
    """A new packet with `pkt`'s bytes and timing: bitstream filters take the packet they are
    given (PyAV leaves it empty), and the index keeps its own."""
    copy = ffmpeg_packet(pkt)  # one copy, not a bytes object and then a copy of it
    copy.pts, copy.dts, copy.time_base = pkt.pts, pkt.dts, pkt.time_base
    copy.is_keyframe = is_key
    return copy


def planned_access_units(index: PacketIndex, plan: Plan, stream: Any) -> list[GopUnits]:
    """The planned prefix of each GOP as NVDEC input, GOPs in decode order.

    H.264/HEVC go through FFmpeg's `*_mp4toannexb` filter (a no-op on Annex B input); the first
    unit of a GOP that still lacks parameter sets (a non-IDR keyframe) gets them from the
    extradata. An AV1 keyframe without a sequence header gets the av1C config OBUs. VP9 and AV1
    packets are otherwise passed through; NVDEC's parser splits VP9 superframes itself.
    """
    codec = stream_codec(stream)
    nvdec_codec(codec)
    extradata = bytes(stream.codec_context.extradata or b"")
    bsf = (
        av.bitstream.BitStreamFilterContext(_ANNEXB_FILTERS[codec], stream)
        if codec in _ANNEXB_FILTERS
        else None
    )
    headers = parameter_sets(codec, extradata)
    if codec == "av1" and len(extradata) > 4 and extradata[0] & 0x80:
        headers = extradata[4:]  # av1C: 4 bytes of fields, then configOBUs
    gops: list[GopUnits] = []
    for start, length in sorted(plan.prefixes.items()):
        if bsf is not None:
            bsf.flush()  # a GOP prefix starts a new run of packets, like a seek
        units: list[AccessUnit] = []
        corrupt = 0
        for i in range(start, start + length):
            pkt = index.packet(i)
            is_key = bool(index.is_key[i])
            if bsf is None:
                data = bytes(pkt)
            else:
                try:
                    data = b"".join(bytes(p) for p in bsf.filter(_copy_packet(pkt, is_key)))
                except av.error.FFmpegError:
                    corrupt += 1
                    continue
            if data:
                units.append(AccessUnit(data, float(index.pts_s[i]), is_key, i))
        # NAL unit types of the GOP's first unit (H.264/HEVC), read once for both checks.
        first_nals = (
            set(nal_types(codec, units[0].data, until_slice=True))
            if units and codec in _PARAMETER_SETS
            else set()
        )
        if units and headers:
            first = units[0]
            if codec in _PARAMETER_SETS:
                missing = not _PARAMETER_SETS[codec] <= first_nals
            else:
                missing = 1 not in av1_obu_types(first.data)  # OBU_SEQUENCE_HEADER
            if missing:
                units[0] = first._replace(data=headers + first.data)
        idr = codec not in _IDR_NAL_TYPES or bool(_IDR_NAL_TYPES[codec] & first_nals)
        gops.append(GopUnits(start, tuple(units), corrupt, idr))
    return gops


# ---------------------------------------------------------------------------------------------
# CPU side: display rotation and colour


def _decoded_rotation(stream: Any, index: PacketIndex) -> int:
    """Rotation from one CPU-decoded keyframe: PyAV exposes the display matrix on frames only."""
    cc = stream.codec_context
    try:
        frames = list(cc.decode(index.packet(int(index.keyframes[0]))))
        frames += cc.decode(None)
    except av.error.FFmpegError:
        return 0
    finally:
        cc.flush_buffers()
    return int(getattr(frames[0], "rotation", 0) or 0) % 360 if frames else 0


def display_rotation(src: Source, container: Any, stream: Any, index: PacketIndex) -> int:
    """The clip's counter-clockwise display rotation. MP4/MOV: read from the `tkhd` box, no
    decoding. Other containers: one keyframe is decoded on the CPU to read it."""
    name = str(container.format.name)
    if "mp4" in name or "mov" in name:
        try:
            found = isobmff_rotation(src.read, src.size, int(stream.index))
        except (OSError, struct.error, IndexError):
            found = None
        if found is not None:
            return found
    return _decoded_rotation(stream, index)


def yuv_to_rgb_matrix(colorspace: int, full_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """(M, offset) with RGB = M @ (Y, U, V) + offset, all on the 0..255 scale.

    BT.709 and BT.2020 by their AVColorSpace tags, BT.601 otherwise; limited ("MPEG") range
    unless `full_range`.
    """
    kr, kb = _KR_KB.get(int(colorspace), _BT601)
    kg = 1.0 - kr - kb
    ys, cs, y0 = (1 / 255, 1 / 255, 0.0) if full_range else (1 / 219, 1 / 224, 16.0)
    m = 255.0 * np.array(
        [
            [ys, 0.0, 2 * (1 - kr) * cs],
            [ys, -2 * kb * (1 - kb) / kg * cs, -2 * kr * (1 - kr) / kg * cs],
            [ys, 2 * (1 - kb) * cs, 0.0],
        ]
    )
    offset = -m @ np.array([y0, 128.0, 128.0])
    return m.astype(np.float32), offset.astype(np.float32)


def area_weights(extent: int, samples: int, out: int, step: int = 1) -> np.ndarray:
    """(out, samples) box-filter weights resizing `samples` samples, each covering `step` units
    of [0, extent), to `out` samples: the exact-area resampling of cv2.INTER_AREA. With step 2 it
    resamples a half-resolution chroma plane as if it had been upsampled by repetition first."""
    lo = np.arange(samples, dtype=np.float64) * step
    hi = np.minimum(lo + step, extent)
    scale = extent / out
    dst_lo = np.arange(out, dtype=np.float64)[:, None] * scale
    overlap = np.minimum(hi[None, :], dst_lo + scale) - np.maximum(lo[None, :], dst_lo)
    return (np.clip(overlap, 0.0, None) / scale).astype(np.float32)


@dataclass(frozen=True)
class Nv12ToRgb:
    """NV12 (uint8) or P016 (uint16, MSB-aligned) surfaces of one clip, (height * 3/2, width)
    as NVDEC exports them, to (3, H, W) float32 RGB in [0, 255] on the surface's device.

    Luma and chroma are box-resized separately to the pre-rotation size (two matmuls per plane,
    weights from `area_weights`) and converted to RGB at that size (the conversion is affine,
    so it commutes with averaging, up to clamping), then turned counter-clockwise by
    `rotation` degrees. Build one per clip with `build`.
    """

    height: int
    width: int
    rows: Any  # (h, height) luma weights
    cols: Any  # (w, width)
    chroma_rows: Any  # (h, ceil(height / 2))
    chroma_cols: Any  # (w, ceil(width / 2))
    matrix: Any  # (3, 3) YUV -> RGB
    offset: Any  # (3,)
    rotation: int

    @classmethod
    def build(
        cls,
        height: int,
        width: int,
        out: tuple[int, int],
        rotation: int,
        colorspace: int,
        full_range: bool,
        device: Any,
    ) -> Nv12ToRgb:
        """`out` is the (height, width) wanted after rotation."""
        import torch

        h, w = (out[1], out[0]) if rotation in (90, 270) else out  # resize before turning
        ch, cw = (height + 1) // 2, (width + 1) // 2
        m, off = yuv_to_rgb_matrix(colorspace, full_range)

        def t(a: np.ndarray) -> Any:
            return torch.from_numpy(a).to(device)

        return cls(
            height=height,
            width=width,
            rows=t(area_weights(height, height, h)),
            cols=t(area_weights(width, width, w)),
            chroma_rows=t(area_weights(height, ch, h, 2)),
            chroma_cols=t(area_weights(width, cw, w, 2)),
            matrix=t(m),
            offset=t(off),
            rotation=rotation % 360,
        )

    def __call__(self, surface: Any) -> Any:
        """One (rows, W) surface -> (3, H, W), or a stack (N, rows, W) -> (N, 3, H, W): a stack
        converts in one set of kernels (~10) instead of ~10 per frame."""
        import torch

        single = surface.dim() == 2
        x = (surface[None] if single else surface).to(torch.float32)
        if surface.dtype != torch.uint8:
            x = x * (1.0 / 256.0)  # P016: 10/12-bit samples in the high bits of 16
        ch, cw = self.chroma_rows.shape[1], self.chroma_cols.shape[1]
        y = x[:, : self.height, : self.width]
        uv = x[:, self.height : self.height + ch, : 2 * cw]
        if uv.shape[1] < ch:  # odd heights: the exported view may stop a chroma row short
            uv = torch.cat([uv, uv[:, -1:].expand(-1, ch - uv.shape[1], -1)], dim=1)
        n = uv.shape[0]
        uv = uv.reshape(n, ch, cw, 2).permute(0, 3, 1, 2)  # (N, 2, ch, cw): U, V planes
        y_small = self.rows @ (y @ self.cols.T)  # (N, h, w)
        uv_small = self.chroma_rows @ (uv @ self.chroma_cols.T)  # (N, 2, h, w)
        yuv = torch.cat([y_small[:, None], uv_small], dim=1)
        rgb = torch.einsum("ij,njhw->nihw", self.matrix, yuv) + self.offset[:, None, None]
        rgb = rgb.clamp_(0.0, 255.0)
        k = self.rotation // 90
        if k:
            rgb = torch.rot90(rgb, k=k, dims=(2, 3))
        return rgb[0] if single else rgb


# `Nv12ToRgb.build`, kept for the next clip of the same size and colour: building the weights
# costs ~4 ms of CPU (540x960 to 224x128 here), about what the conversion itself costs on the
# GPU. 64 entries of at most ~2 MB of device memory each.
converter = functools.lru_cache(maxsize=64)(Nv12ToRgb.build)


# ---------------------------------------------------------------------------------------------
# GPU side: sessions


def _import_nvc() -> Any:
    try:
        import PyNvVideoCodec
    except Exception as exc:  # ImportError, or RuntimeError from its driver check
        raise BackendUnavailable(
            f"decode backend 'nvdec' needs the PyNvVideoCodec package and an NVIDIA driver "
            f"with NVDEC (pip install 'vidtag[nvdec]'): {exc}"
        ) from exc
    return PyNvVideoCodec


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable(
            "decode backend 'nvdec' needs torch (pip install 'vidtag[nvdec]')"
        ) from exc
    return torch


def _align(n: int, a: int = 32) -> int:
    return (n + a - 1) // a * a


@dataclass
class _Session:
    decoder: Any
    bits: int
    stream: Any  # torch.cuda.Stream the decoder writes on, None on the CPU (tests)
    max_size: tuple[int, int]  # (width, height) the session was created for
    size: tuple[int, int] | None = None  # (width, height) of the last clip


class _SurfaceView:
    """`__cuda_array_interface__` of a P016 surface (PyNvVideoCodec 2.x exports 16-bit
    surfaces through DLPack with element strides of (width, 2), which is wrong)."""

    def __init__(self, ptr: int, width: int, height: int) -> None:
        rows = height + (height + 1) // 2
        self.__cuda_array_interface__ = {
            "version": 3,
            "shape": (rows, width),
            "typestr": "<u2",
            "strides": (2 * width, 2),
            "data": (int(ptr), False),
            "stream": None,  # written on the stream we read on: nothing to wait for
        }


FrameSink = Callable[[int, Any], None]  # (packet index, surface tensor valid until next Decode)


@dataclass
class NvdecDecoderPool:
    """NVDEC sessions, one per (thread, codec, bit depth), created once and reused.

    A clip of another size reconfigures the session (`setReconfigParams`, applied by NVDEC at
    the next sequence header); only a clip larger than the session's maximum coded size creates
    a new one. Each thread gets its own CUDA stream: the decoder writes its output surfaces on
    it and the caller's torch work runs on it, so a surface is consumed before NVDEC reuses it.
    `module` replaces PyNvVideoCodec (tests) and `device` the CUDA device.
    """

    gpu_id: int = 0
    max_width: int = DEFAULT_MAX_SIZE
    max_height: int = DEFAULT_MAX_SIZE
    module: Any = None
    device: str | None = None
    # Flush (an end-of-stream packet) after every GOP, or (False) only in front of a GOP that
    # does not start with an IDR, and after the last: 8 flushes cost ~4 ms of a 30 s 540x960
    # clip's 16 ms in NVDEC (one H100; frames identical; benchmarks/nvdec_profile.py).
    flush_every_gop: bool = False
    # DisplayDecodeLatencyType: NATIVE (display order, ~4 frames held back), LOW (display
    # order, none held back) or ZERO (decode order).
    latency: str = "NATIVE"
    created: int = 0  # sessions created so far
    reconfigured: int = 0  # size changes handled by reconfiguring
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def nvc(self) -> Any:
        if self.module is None:
            self.module = _import_nvc()
        return self.module

    @property
    def torch_device(self) -> str:
        return self.device or f"cuda:{self.gpu_id}"

    def _sessions(self) -> dict[tuple[str, int], _Session]:
        sessions: dict[tuple[str, int], _Session] | None = getattr(self._local, "sessions", None)
        if sessions is None:
            sessions = self._local.sessions = {}
        return sessions

    def session(self, codec: str, bits: int, width: int, height: int) -> _Session:
        """This thread's session for (codec, bits), ready for a clip of `width` x `height`."""
        nvc = self.nvc()
        sessions = self._sessions()
        need = (_align(width, 16), _align(height, 16))  # coded size, macroblock/CTB-aligned
        s = sessions.get((codec, bits))
        if s is not None and need[0] <= s.max_size[0] and need[1] <= s.max_size[1]:
            if s.size is not None and s.size != (width, height):
                s.decoder.setReconfigParams(width, height)
                with self._lock:
                    self.reconfigured += 1
            s.size = (width, height)
            return s
        max_size = (
            _align(max(self.max_width, need[0], s.max_size[0] if s else 0)),
            _align(max(self.max_height, need[1], s.max_size[1] if s else 0)),
        )
        stream = None
        handle = 0
        if self.torch_device.startswith("cuda"):
            torch = _import_torch()
            stream = torch.cuda.Stream(device=self.torch_device)
            handle = int(stream.cuda_stream)
        decoder = nvc.CreateDecoder(
            gpuid=self.gpu_id,
            codec=getattr(nvc.cudaVideoCodec, NVDEC_CODECS[codec]),
            cudacontext=0,  # the device's primary context, the one torch uses
            cudastream=handle,
            usedevicememory=True,
            maxwidth=max_size[0],
            maxheight=max_size[1],
            outputColorType=nvc.OutputColorType.NATIVE,
            latency=getattr(nvc.DisplayDecodeLatencyType, self.latency),
        )
        with self._lock:
            self.created += 1
        s = _Session(decoder, bits, stream, max_size, (width, height))
        sessions[(codec, bits)] = s
        return s

    def drop(self, codec: str, bits: int) -> None:
        """Forget this thread's session for (codec, bits); the next clip creates a new one."""
        self._sessions().pop((codec, bits), None)

    def decode(
        self,
        codec: str,
        bits: int,
        size: tuple[int, int],
        gops: list[GopUnits],
        wanted: set[int],
        sink: FrameSink,
        limit_s: float,
    ) -> tuple[int, _Session]:
        """Feed every GOP, flushing after each, with the session's stream current. `sink` gets
        the surface of each output frame whose packet is in `wanted`, as a torch tensor that is
        valid only until the next Decode call (NVDEC reuses the surface). `size` is the clip's
        (width, height). Returns (frames output, session).

        A decoder error drops the session and retries the clip once on a fresh one (a failed
        reconfigure leaves a session unusable); a second failure raises InvalidVideo.
        """
        deadline = time.monotonic() + limit_s
        for attempt in range(2):
            s = self.session(codec, bits, *size)
            try:
                with self._on_stream(s):
                    return self._feed(s, gops, wanted, sink, deadline, limit_s), s
            except (LimitExceeded, BackendUnavailable):
                raise
            except Exception as exc:  # PyNvVCException and friends
                self.drop(codec, bits)
                if attempt:
                    raise InvalidVideo(f"NVDEC could not decode the video: {exc}") from exc
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _on_stream(self, s: _Session) -> Iterator[None]:
        if s.stream is None:
            yield
            return
        torch = _import_torch()
        # Work the caller queued on its stream (e.g. uploads) comes first.
        s.stream.wait_stream(torch.cuda.current_stream(self.torch_device))
        with torch.cuda.stream(s.stream):
            yield

    def _feed(
        self,
        s: _Session,
        gops: list[GopUnits],
        wanted: set[int],
        sink: FrameSink,
        deadline: float,
        limit_s: float,
    ) -> int:
        nvc = self.nvc()
        out = 0

        def take(frames: list[Any]) -> None:
            for frame in frames:
                i = int(frame.timestamp)
                if i in wanted:
                    sink(i, self._surface(s, frame))

        for k, gop in enumerate(gops):
            for unit in gop.units:
                if time.monotonic() > deadline:
                    s.decoder.Decode(nvc.PacketData())  # drain: the next clip starts clean
                    raise LimitExceeded(f"decoding took longer than {limit_s:.1f} s")
                buf = np.frombuffer(unit.data, dtype=np.uint8)
                pkt = nvc.PacketData()
                pkt.bsl_data = int(buf.ctypes.data)  # read during Decode; `buf` outlives it
                pkt.bsl = int(buf.size)
                pkt.pts = unit.packet  # NVDEC hands it back on the frame this packet carries
                frames = s.decoder.Decode(pkt)
                out += len(frames)
                take(frames)
            if self.flush_every_gop or k + 1 == len(gops) or not gops[k + 1].idr:
                end = nvc.PacketData()  # empty packet: end of stream, flushes the reorder queue
                end.bsl, end.bsl_data = 0, 0
                frames = s.decoder.Decode(end)
                out += len(frames)
                take(frames)
        return out

    def _surface(self, s: _Session, frame: Any) -> Any:
        """The frame's NV12 / P016 surface as a (H * 3/2, W) torch tensor, no copy."""
        torch = _import_torch()
        if s.bits == 8:
            return torch.from_dlpack(frame)
        view = _SurfaceView(frame.GetPtrToPlane(0), s.decoder.GetWidth(), s.decoder.GetHeight())
        return torch.as_tensor(view, device=self.torch_device)


_POOL: NvdecDecoderPool | None = None
_POOL_LOCK = threading.Lock()


def default_pool() -> NvdecDecoderPool:
    """The process-wide pool `sample_nvdec` uses (GPU 0 unless its `gpu_id` is set before the
    first decode)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = NvdecDecoderPool()
        return _POOL


# ---------------------------------------------------------------------------------------------
# Entry points


@dataclass(frozen=True)
class GpuClip(DecodedClip):
    """`DecodedClip` with the frames left on the GPU: (T, 3, H, W) torch tensor, uint8 RGB (or
    float32 in [0, 1]), display orientation."""

    frames: Any

    def to_host(self) -> DecodedClip:
        """Copy to a `DecodedClip`: (T, H, W, 3) uint8 numpy frames."""
        import torch

        x = self.frames
        if x.dtype != torch.uint8:
            x = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        return self.recast(DecodedClip, frames=x.permute(0, 2, 3, 1).contiguous().cpu().numpy())


def _bit_depth(stream: Any, codec: str) -> int:
    fmt = stream.codec_context.format
    name = fmt.name if fmt is not None else "yuv420p"
    bits = _420_FORMATS.get(name)
    if bits is None:
        raise InvalidVideo(f"pixel format {name} not supported by the nvdec backend (4:2:0 only)")
    if bits > 8 and codec == "h264":
        raise InvalidVideo(f"{bits}-bit H.264 not supported by NVDEC")
    return bits


class PictureFormat(NamedTuple):
    bits: int
    full_range: bool
    colorspace: int  # AVColorSpace; 2 = unspecified (BT.601 is assumed)


def picture_format(stream: Any, codec: str, gops: list[GopUnits]) -> PictureFormat:
    """Bit depth and colour of the decoded pictures. The light stream probe leaves an H.264
    stream's pixel format unknown; its SPS (in front of the first planned keyframe, from the
    extradata or in-band) says it instead."""
    cc = stream.codec_context
    colorspace = int(cc.colorspace or 2)
    if cc.format is not None or codec != "h264":
        yuvj = cc.format is not None and cc.format.name.startswith("yuvj")
        return PictureFormat(_bit_depth(stream, codec), yuvj or cc.color_range == 2, colorspace)
    first = gops[0].units[0].data if gops and gops[0].units else b""
    sps = next((n for n in _start_code_split(first) if n and n[0] & 0x1F == 7), None)
    if sps is None:
        raise InvalidVideo("H.264 stream without a sequence parameter set before its keyframe")
    try:
        info = parse_sps(sps)
    except ValueError as exc:
        raise InvalidVideo(f"unreadable H.264 sequence parameter set: {exc}") from exc
    if info.chroma_format != 1:
        raise InvalidVideo("H.264 chroma format not supported by the nvdec backend (4:2:0 only)")
    if info.bit_depth > 8:
        raise InvalidVideo(f"{info.bit_depth}-bit H.264 not supported by NVDEC")
    if colorspace == 2:
        colorspace = info.matrix
    return PictureFormat(8, info.full_range or cc.color_range == 2, colorspace)


def sample_nvdec_cuda(
    source: Input,
    spec: SamplingSpec,
    limits: DecodeLimits,
    *,
    pool: NvdecDecoderPool | None = None,
    dtype: str = "uint8",
) -> GpuClip:
    """Decode `spec.frames` planned frames on the GPU; frames stay there as a (T, 3, H, W)
    tensor, uint8 or (`dtype="float32"`) float32 in [0, 1]. Raises InvalidVideo / LimitExceeded
    like the other backends, BackendUnavailable without PyNvVideoCodec, torch or a GPU."""
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32', not {dtype!r}")
    t0 = time.perf_counter()
    pool = pool or default_pool()
    pool.nvc()  # fail before any CPU work when the package is missing
    torch = _import_torch()
    device = pool.torch_device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable("decode backend 'nvdec' needs a CUDA device; none is visible")

    # The light probe: FFmpeg decodes no picture to open the container (picture_format).
    with indexed(source, limits, light_probe=True) as (src, container, stream, index):
        codec = stream_codec(stream)
        nvdec_codec(codec)
        whole = plan_frames(index, spec)
        plan, positions = share_plan(index, whole, spec.share)
        if not plan.chosen:
            empty = empty_share(index, whole, spec, time.perf_counter() - t0)
            kind = torch.float32 if dtype == "float32" else torch.uint8
            none = torch.empty((0, 3, spec.height, spec.width), dtype=kind, device=device)
            return empty.recast(GpuClip, frames=none)
        gops = planned_access_units(index, plan, stream)
        bits, full_range, colorspace = picture_format(stream, codec, gops)
        rotation = display_rotation(src, container, stream, index)
        convert = converter(
            index.height,
            index.width,
            (spec.height, spec.width),
            rotation,
            colorspace,
            full_range,
            device,
        )

    swap = rotation in (90, 270)
    wanted = set(plan.chosen)
    surfaces: dict[int, Any] = {}

    def sink(i: int, surface: Any) -> None:
        if i not in surfaces:
            surfaces[i] = surface.clone()  # NVDEC reuses the surface

    decoded, session = pool.decode(
        codec, bits, (index.width, index.height), gops, wanted, sink, limits.max_decode_s
    )
    if not surfaces:
        raise InvalidVideo("no frame of the video could be decoded")
    # A planned frame that failed to decode is replaced by the nearest one that did.
    picks, stamps, dev = served_frames(index, plan, positions, surfaces.keys())
    got = sorted(surfaces)
    slot = {i: k for k, i in enumerate(got)}
    side = session.stream
    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
        rgb = convert(torch.stack([surfaces[i] for i in got]))  # (decoded, 3, H, W)
        frames = rgb[[slot[i] for i in picks]]
        as_float = dtype == "float32"
        frames = frames.mul_(1.0 / 255.0) if as_float else frames.round_().to(torch.uint8)
    if side is not None:
        caller = torch.cuda.current_stream(device)
        caller.wait_stream(side)  # the caller's stream sees finished frames
        frames.record_stream(caller)  # and the allocator keeps them until it is done
    h, w = index.height, index.width
    return GpuClip(
        frames=frames,
        timestamps=stamps,
        targets=plan.targets,
        frames_decoded=decoded,
        packets_planned=plan.packets_to_decode,
        corrupt_packets=sum(g.corrupt for g in gops),
        mean_deviation=dev,
        width=h if swap else w,
        height=w if swap else h,
        duration=index.duration,
        fps=index.fps,
        codec=codec,
        rotation=rotation,
        keyframes=int(index.is_key.sum()),
        seconds=time.perf_counter() - t0,
        positions=positions if spec.share[1] > 1 else (),
    )


def sample_nvdec(source: Input, spec: SamplingSpec, limits: DecodeLimits) -> DecodedClip:
    """The registered `nvdec` backend: `sample_nvdec_cuda` copied back to host memory."""
    t0 = time.perf_counter()
    clip = sample_nvdec_cuda(source, spec, limits).to_host()
    return clip.recast(DecodedClip, seconds=time.perf_counter() - t0)
