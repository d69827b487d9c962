"""The H.264 SPS reader agrees with what FFmpeg learns by decoding a picture."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vidtag.decode import nvdec_backend
from vidtag.decode.h264_sps import parse_sps, rbsp
from vidtag.decode.limits import DecodeLimits
from vidtag.decode.planner import plan_frames
from vidtag.decode.pyav_backend import indexed
from vidtag.decode.spec import SamplingSpec
from vidtag.errors import InvalidVideo

# (pix_fmt, extra x264-params): chroma formats, bit depths, VUI colour, scaling lists, profiles
# ("full" in the name: full-range samples).
CASES = {
    "baseline": ("yuv420p", ""),
    "high": ("yuv420p", ""),
    "bt709-full": ("yuv420p", "colorprim=bt709:transfer=bt709:colormatrix=bt709"),
    "bt2020": ("yuv420p", "colorprim=bt2020:transfer=bt709:colormatrix=bt2020nc"),
    "scaling-lists": ("yuv420p", "cqm=jvt"),
    "high10": ("yuv420p10le", ""),
    "yuv444": ("yuv444p", "colormatrix=smpte170m"),
    "yuv422": ("yuv422p", ""),
}


def _encode(path: Path, pix_fmt: str, params: str) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = 96, 64, pix_fmt
        if "full" in path.stem:
            s.codec_context.color_range = 2  # AVCOL_RANGE_JPEG
        s.options = {
            "preset": "veryfast",
            **({"profile": "baseline"} if path.stem == "baseline" else {}),
            "x264-params": "keyint=5" + (":" + params if params else ""),
        }
        img = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)
            frame.pts = i
            for pkt in s.encode(frame):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def _sps(path: Path) -> bytes:
    with av.open(str(path)) as c:
        ed = bytes(c.streams.video[0].codec_context.extradata)
    annexb = nvdec_backend.parameter_sets("h264", ed)
    return next(n for n in nvdec_backend._start_code_split(annexb) if n and n[0] & 0x1F == 7)


@pytest.mark.parametrize("case", sorted(CASES))
def test_sps_fields_match_ffmpeg_decoding_a_picture(tmp_path: Path, case: str) -> None:
    path = _encode(tmp_path / f"{case}.mp4", *CASES[case])
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context  # the full probe decoded a picture
        name, space, full = cc.format.name, int(cc.colorspace), cc.color_range == 2
    info = parse_sps(_sps(path))
    chroma = {"420": 1, "422": 2, "444": 3}[name.removeprefix("yuvj").removeprefix("yuv")[:3]]
    assert info.chroma_format == chroma
    assert info.bit_depth == (10 if "10" in name else 8)
    assert info.full_range == (full or name.startswith("yuvj"))
    assert info.matrix == space
    assert info.profile == {"baseline": 66, "high10": 110, "yuv444": 244, "yuv422": 122}.get(
        case, 100
    )


def test_rbsp_drops_emulation_prevention_bytes() -> None:
    assert rbsp(b"\x00\x00\x03\x01\x00\x00\x03\x00\x03") == b"\x00\x00\x01\x00\x00\x00\x03"


def test_truncated_or_foreign_nal_units_are_refused(tmp_path: Path) -> None:
    sps = _sps(_encode(tmp_path / "c.mp4", "yuv420p", ""))
    with pytest.raises(ValueError):
        parse_sps(sps[:4])
    with pytest.raises(ValueError):
        parse_sps(b"\x68\xee\x3c\x80")  # a PPS


@pytest.mark.parametrize(
    ("case", "error"),
    [("bt709-full", None), ("high10", "10-bit H.264"), ("yuv444", "4:2:0 only")],
)
def test_nvdec_learns_the_picture_format_from_the_light_probe(
    tmp_path: Path, case: str, error: str | None
) -> None:
    """The nvdec backend opens with the light probe (no picture decoded) and still gets bit
    depth, range and matrix right, or refuses what NVDEC cannot decode."""
    path = _encode(tmp_path / f"{case}.mp4", *CASES[case])
    with indexed(path, DecodeLimits(), light_probe=True) as (_, _, stream, index):
        assert stream.codec_context.format is None
        gops = nvdec_backend.planned_access_units(
            index, plan_frames(index, SamplingSpec(frames=2)), stream
        )
        if error:
            with pytest.raises(InvalidVideo, match=error):
                nvdec_backend.picture_format(stream, "h264", gops)
            return
        fmt = nvdec_backend.picture_format(stream, "h264", gops)
    assert fmt == nvdec_backend.PictureFormat(8, True, 1)
