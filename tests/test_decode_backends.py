"""The `opencv` baseline and the `nvdec` backend.

NVDEC itself needs a GPU; here its CPU side is tested directly (Annex B access units, rotation,
NV12 -> RGB) and the GPU side runs end to end against `nvdec_fake`, a PyAV-backed stand-in for
PyNvVideoCodec, with torch on the CPU.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from media import encode_clip, red_centroid_x
from nvdec_fake import FakeDecoder, FakeNvc

from vidtag.decode import DecodeLimits, SamplingSpec, backends, pyav_backend, sample_frames
from vidtag.decode import nvdec_backend as nvdec
from vidtag.decode.index import PacketIndex, build_index
from vidtag.decode.mp4 import isobmff_rotation
from vidtag.decode.planner import Plan, plan_frames
from vidtag.decode.pyav_backend import open_container
from vidtag.decode.source import Source
from vidtag.errors import BackendUnavailable, InvalidVideo, LimitExceeded

SMALL = SamplingSpec(frames=6, height=64, width=32)
GARBAGE = [b"", b"\x00" * 1000, b"not a video at all" * 50]


def _moving_square(i: int, n: int, width: int, height: int) -> np.ndarray:
    img = np.full((height, width, 3), (40, 90, 160), dtype=np.uint8)
    side = max(8, width // 5)
    x = int(i / max(n - 1, 1) * (width - side))
    y = height // 2 - side // 2
    img[y : y + side, x : x + side] = (250, 30, 30)
    return img


def encode_hevc(path: Path, *, gop: int = 25, seconds: float = 4.0, open_gop: bool = False) -> Path:
    """160x288 HEVC (x265, B-frames), closed GOPs unless `open_gop`."""
    n, fps, w, h = round(25 * seconds), 25, 160, 288
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx265", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.codec_tag = "hvc1"
        s.options = {
            "preset": "ultrafast",
            "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=3:"
            f"open-gop={int(open_gop)}:log-level=error",
        }
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_moving_square(i, n, w, h), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for pkt in s.encode(frame):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def encode_rotated(path: Path, rotation: int, *, width: int = 96, height: int = 160) -> Path:
    """H.264 whose display image (width x height) has a red band on top, stored turned so that
    a player applying the display matrix (`rotation` degrees counter-clockwise) shows it."""
    k = rotation // 90
    coded = (height, width) if k % 2 else (width, height)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = *coded, "yuv420p"
        s.options = {"preset": "ultrafast", "x264-params": "keyint=10:scenecut=0"}
        if rotation:
            s.set_display_rotation(rotation)
        for i in range(25):
            img = _moving_square(i, 25, width, height)
            img[: height // 8] = (250, 30, 30)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(img, -k)), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for pkt in s.encode(frame):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


@pytest.fixture(scope="module")
def hevc_clip(clip_dir: Path) -> Path:
    return encode_hevc(clip_dir / "hevc.mp4")


@pytest.fixture(scope="module")
def vp9_clip(clip_dir: Path) -> Path:
    return encode_clip(clip_dir / "backends_vp9.webm", codec="libvpx-vp9", gop=25, seconds=2.0)


@pytest.fixture(scope="module")
def rotated_clip(clip_dir: Path) -> Path:
    return encode_rotated(clip_dir / "rot90.mp4", 90)


def _red_band_on_top(frames: np.ndarray) -> bool:
    top = frames[:, : frames.shape[1] // 16].astype(int)
    bottom = frames[:, -frames.shape[1] // 16 :].astype(int)
    return bool((top[..., 0] - top[..., 2]).mean() > 150 and (bottom[..., 0] < 120).mean() > 0.9)


# ---------------------------------------------------------------------------------------------
# opencv


def test_all_backends_listed() -> None:
    assert {"pyav", "opencv", "nvdec"} <= set(backends())


def test_importing_decode_loads_no_optional_package() -> None:
    import subprocess

    code = (
        "import sys, vidtag.decode as d; d.backends(); "
        "print(sorted({'cv2', 'torch', 'PyNvVideoCodec'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_opencv_frames_and_metadata(h264_clip: Path) -> None:
    pytest.importorskip("cv2")
    clip = sample_frames(h264_clip, SamplingSpec(frames=8, height=64, width=32), backend="opencv")
    assert clip.frames.shape == (8, 64, 32, 3) and clip.frames.dtype == np.uint8
    assert (clip.width, clip.height) == (160, 288)
    assert clip.codec == "h264" and clip.rotation == 0
    assert clip.duration == pytest.approx(4.0, abs=0.05) and clip.fps == pytest.approx(25.0)
    xs = [red_centroid_x(f) for f in clip.frames]
    assert all(np.isfinite(xs)) and all(b > a for a, b in itertools.pairwise(xs))


def test_opencv_timestamps_near_targets(h264_clip: Path) -> None:
    pytest.importorskip("cv2")
    clip = sample_frames(h264_clip, SMALL, backend="opencv")
    assert len(clip.timestamps) == len(clip.targets) == SMALL.frames
    # a seek to round(t * fps) lands within half a frame of the target
    assert np.abs(np.subtract(clip.timestamps, clip.targets)).max() <= 0.5 / 25 + 1e-6
    exact = sample_frames(h264_clip, SamplingSpec(6, 64, 32, policy="exact"), backend="pyav")
    assert np.allclose(clip.timestamps, exact.timestamps, atol=1e-6)


def test_opencv_rotated_clip_is_upright(rotated_clip: Path) -> None:
    pytest.importorskip("cv2")
    clip = sample_frames(rotated_clip, SMALL, backend="opencv")
    ref = sample_frames(rotated_clip, SMALL, backend="pyav")
    assert clip.rotation == ref.rotation == 90
    assert (clip.width, clip.height) == (ref.width, ref.height) == (96, 160)
    assert clip.frames.shape == (6, 64, 32, 3)
    assert _red_band_on_top(clip.frames) and _red_band_on_top(ref.frames)


def test_opencv_bytes_and_path_agree(
    h264_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cv2")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    a = sample_frames(h264_clip, SMALL, backend="opencv")
    b = sample_frames(h264_clip.read_bytes(), SMALL, backend="opencv")
    assert np.array_equal(a.frames, b.frames) and a.timestamps == b.timestamps
    assert list(tmp_path.iterdir()) == []  # the spilled bytes are gone again


def test_opencv_limits(h264_clip: Path) -> None:
    pytest.importorskip("cv2")
    data = h264_clip.read_bytes()
    cases = [
        (DecodeLimits(max_bytes=100), "bytes"),
        (DecodeLimits(max_pixels=100 * 100), "pixels"),
        (DecodeLimits(max_duration_s=1.0), "duration"),
        (DecodeLimits(max_packets=10), "frames"),
        (DecodeLimits(max_decode_s=-1.0), "took longer"),
    ]
    for limits, match in cases:
        for source in (data, h264_clip):
            with pytest.raises(LimitExceeded, match=match):
                sample_frames(source, SMALL, limits, backend="opencv")


@pytest.mark.parametrize("data", GARBAGE, ids=["empty", "zeros", "text"])
def test_opencv_garbage_is_invalid(data: bytes) -> None:
    pytest.importorskip("cv2")
    with pytest.raises(InvalidVideo):
        sample_frames(data, SMALL, backend="opencv")


def test_opencv_missing_file_is_invalid(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    with pytest.raises(InvalidVideo, match="no such file"):
        sample_frames(tmp_path / "nope.mp4", SMALL, backend="opencv")


def test_opencv_without_cv2_is_unavailable(
    h264_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(BackendUnavailable, match="opencv-python-headless"):
        sample_frames(h264_clip, SMALL, backend="opencv")


# ---------------------------------------------------------------------------------------------
# nvdec, CPU side


@contextlib.contextmanager
def _opened(path: Path, spec: SamplingSpec) -> Iterator[tuple[Source, PacketIndex, Plan, Any]]:
    """(source, index, plan, video stream) of a clip, as the backends see them."""
    with Source(path, DecodeLimits()) as src:
        container = open_container(src)
        try:
            stream = container.streams.video[0]
            index = build_index(container, stream, DecodeLimits(), src.read, src.size)
            yield src, index, plan_frames(index, spec), stream
        finally:
            container.close()


def _decode_annexb(codec: str, data: bytes) -> int:
    """Frames PyAV's raw parser + decoder get out of an elementary stream."""
    ctx = av.CodecContext.create(codec, "r")
    frames = 0
    for pkt in [*ctx.parse(data), *ctx.parse(None)]:
        frames += len(ctx.decode(pkt))
    return frames + len(ctx.decode(None))


def test_nvdec_codec_names() -> None:
    assert [nvdec.nvdec_codec(c) for c in ("h264", "hevc", "vp9", "av1")] == [
        "H264",
        "HEVC",
        "VP9",
        "AV1",
    ]
    with pytest.raises(InvalidVideo, match="codec mpeg4 not supported by NVDEC"):
        nvdec.nvdec_codec("mpeg4")


@pytest.mark.parametrize("clip", ["h264_clip", "hevc_clip"])
def test_access_units_are_annexb_gops(clip: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(clip)
    with _opened(path, SamplingSpec(frames=8, policy="exact")) as (_, index, plan, stream):
        codec = nvdec.stream_codec(stream)
        gops = nvdec.planned_access_units(index, plan, stream)
    params = {"h264": {7, 8}, "hevc": {32, 33, 34}}[codec]
    assert [(g.start, len(g.units)) for g in gops] == sorted(plan.prefixes.items())
    assert index.keyframes.size > 1 and len(gops) > 1
    for gop in gops:
        assert gop.corrupt == 0
        assert [u.packet for u in gop.units] == list(range(gop.start, gop.start + len(gop.units)))
        assert all(u.data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")) for u in gop.units)
        first = gop.units[0]
        assert first.is_key and first.pts_s == index.pts_s[gop.start]
        types = nvdec.nal_types(codec, first.data)
        assert params <= set(types)
        # Up to the first slice: the parameter sets and the IDR decision, no picture data.
        slices = {"h264": range(1, 6), "hevc": range(32)}[codec]
        cut = next(k for k, t in enumerate(types) if t in slices) + 1
        assert nvdec.nal_types(codec, first.data, until_slice=True) == types[:cut]
        # The units of one GOP are a stream a decoder can start on: every packet gives a frame.
        assert _decode_annexb(codec, b"".join(u.data for u in gop.units)) == len(gop.units)


def test_nal_types_skip_empty_units() -> None:
    # SPS, an empty unit (two start codes in a row), PPS, IDR slice, a trailing start code.
    au = b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x01" + b"\x00\x00\x01\x68\xce"
    au += b"\x00\x00\x01\x65\x88\x84" + b"\x00\x00\x01\x01\x9a" + b"\x00\x00\x01"
    assert nvdec.nal_types("h264", au) == [7, 8, 5, 1]
    assert nvdec.nal_types("h264", au, until_slice=True) == [7, 8, 5]
    assert list(nvdec._start_code_split(au)) == [
        b"\x67\x42",
        b"",
        b"\x68\xce",
        b"\x65\x88\x84",
        b"\x01\x9a",
        b"",
    ]
    # Zero padding (trailing_zero_8bits) behind an empty unit: still empty, as the split says.
    padded = b"\x00\x00\x01\x67\x42" + b"\x00\x00\x01\x00\x00" + b"\x00\x00\x01\x65\x88"
    assert [n for n in nvdec._start_code_split(padded) if n] == [b"\x67\x42", b"\x65\x88"]
    assert nvdec.nal_types("h264", padded) == [7, 5]
    # An HEVC TRAIL_N header starts with a zero byte and is not empty.
    assert nvdec.nal_types("hevc", b"\x00\x00\x01\x00\x01\xaf") == [0]


def test_parameter_sets_added_to_non_idr_keyframes(clip_dir: Path) -> None:
    # x264's open GOPs start with recovery-point I slices, not IDRs; h264_mp4toannexb puts
    # SPS/PPS only in front of IDRs, so the backend adds them from the avcC.
    path = clip_dir / "opengop.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        s.options = {"x264-params": "keyint=25:min-keyint=25:scenecut=0:bframes=2:open-gop=1"}
        for i in range(75):
            frame = av.VideoFrame.from_ndarray(_moving_square(i, 75, 64, 64), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for pkt in s.encode(frame):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    with _opened(path, SamplingSpec(frames=3, policy="exact")) as (_, index, plan, stream):
        gops = nvdec.planned_access_units(index, plan, stream)
        extradata = bytes(stream.codec_context.extradata)
    assert nvdec.nal_types("h264", nvdec.parameter_sets("h264", extradata)) == [7, 8]
    later = [g for g in gops if g.start > 0]
    assert later
    for gop in later:
        types = nvdec.nal_types("h264", gop.units[0].data)
        assert types[:2] == [7, 8] and 5 not in types  # SPS, PPS, then the non-IDR I slice
        assert _decode_annexb("h264", b"".join(u.data for u in gop.units)) > 0


def test_vp9_packets_pass_through(vp9_clip: Path) -> None:
    with _opened(vp9_clip, SamplingSpec(frames=4, policy="exact")) as (_, index, plan, stream):
        gops = nvdec.planned_access_units(index, plan, stream)
        assert gops and all(u.data == bytes(index.packet(u.packet)) for g in gops for u in g.units)
    assert nvdec.parameter_sets("vp9", b"anything") == b""


def test_unsupported_codec_is_invalid(clip_dir: Path) -> None:
    path = encode_clip(clip_dir / "mpeg4.mp4", codec="mpeg4", gop=25, seconds=1.0)
    with (
        _opened(path, SMALL) as (_, index, plan, stream),
        pytest.raises(InvalidVideo, match="codec mpeg4 not supported by NVDEC"),
    ):
        nvdec.planned_access_units(index, plan, stream)
    fake = FakeNvc()
    with pytest.raises(InvalidVideo, match="not supported by NVDEC"):
        nvdec.sample_nvdec_cuda(path, SMALL, DecodeLimits(), pool=_cpu_pool(fake))
    assert fake.decoders == []


def test_nvdec_without_pynvvideocodec_is_unavailable(
    h264_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)
    monkeypatch.setattr(nvdec, "_POOL", None)
    with pytest.raises(BackendUnavailable, match="PyNvVideoCodec"):
        sample_frames(h264_clip, SMALL, backend="nvdec")


@pytest.mark.parametrize("suffix", ["mp4", "mov", "mkv"])
def test_display_rotation_matches_pyav(clip_dir: Path, suffix: str) -> None:
    for rotation in (0, 90, 180, 270):
        path = encode_rotated(
            clip_dir / f"display{rotation}.{suffix}", rotation, width=32, height=48
        )
        with av.open(str(path)) as c:
            want = int(next(c.decode(video=0)).rotation) % 360
        assert want == rotation
        with _opened(path, SMALL) as (src, index, _, stream):
            assert nvdec.display_rotation(src, stream.container, stream, index) == rotation
            if suffix != "mkv":  # MP4/MOV: straight from tkhd, nothing decoded
                assert isobmff_rotation(src.read, src.size, stream.index) == rotation


def test_area_weights() -> None:
    w = nvdec.area_weights(6, 6, 3)
    assert np.allclose(w, np.kron(np.eye(3), [0.5, 0.5]))
    for extent, samples, out, step in [(288, 288, 64, 1), (288, 144, 64, 2), (5, 3, 2, 2)]:
        assert np.allclose(nvdec.area_weights(extent, samples, out, step).sum(axis=1), 1.0)


@pytest.mark.parametrize(("clip", "rotation"), [("h264_clip", 0), ("rotated_clip", 90)])
def test_nv12_to_rgb_matches_area_resize(
    clip: str, rotation: int, request: pytest.FixtureRequest
) -> None:
    cv2 = pytest.importorskip("cv2")
    import torch

    path: Path = request.getfixturevalue(clip)
    with av.open(str(path)) as c:
        frame = next(itertools.islice(c.decode(video=0), 10, None))
    for out in [(64, 32), (160, 96)]:
        conv = nvdec.Nv12ToRgb.build(frame.height, frame.width, out, rotation, 2, False, "cpu")
        got = conv(torch.from_numpy(frame.to_ndarray(format="nv12")))
        assert got.shape == (3, *out) and got.dtype == torch.float32
        h, w = (out[1], out[0]) if rotation in (90, 270) else out
        small = cv2.resize(frame.to_ndarray(format="rgb24"), (w, h), interpolation=cv2.INTER_AREA)
        ref = np.rot90(small, rotation // 90).astype(np.float32)
        diff = np.abs(got.permute(1, 2, 0).numpy() - ref)
        assert diff.mean() < 2.0 and diff.max() <= 6.0


def test_p016_surfaces_convert_like_nv12(h264_clip: Path) -> None:
    import torch

    with av.open(str(h264_clip)) as c:
        nv12 = next(c.decode(video=0)).to_ndarray(format="nv12")
    conv = nvdec.Nv12ToRgb.build(288, 160, (64, 32), 0, 2, False, "cpu")
    p016 = torch.from_numpy(nv12.astype(np.uint16) << 8)  # 10-bit samples, MSB-aligned
    assert torch.allclose(conv(p016), conv(torch.from_numpy(nv12)))
    view = nvdec._SurfaceView(1234, width=6, height=5).__cuda_array_interface__
    assert view["shape"] == (8, 6) and view["strides"] == (12, 2) and view["data"] == (1234, False)


@pytest.mark.parametrize(("height", "rotation"), [(288, 0), (287, 90)])
def test_a_stack_of_surfaces_converts_like_each_alone(height: int, rotation: int) -> None:
    import torch

    rng = np.random.default_rng(1)
    rows = height + (height + 1) // 2 - (height % 2)  # an odd height's view lacks a chroma row
    surfaces = torch.from_numpy(rng.integers(0, 256, (3, rows, 160), dtype=np.uint8))
    conv = nvdec.Nv12ToRgb.build(height, 160, (64, 32), rotation, 1, False, "cpu")
    alone = torch.stack([conv(x) for x in surfaces])
    assert alone.shape == (3, 3, 64, 32)
    assert torch.allclose(conv(surfaces), alone, atol=1e-4)


def test_yuv_matrix_inverts_bt601_and_bt709() -> None:
    for colorspace, (kr, kb) in [(2, (0.299, 0.114)), (1, (0.2126, 0.0722))]:
        m, off = nvdec.yuv_to_rgb_matrix(colorspace, full_range=False)
        rgb = np.array([200.0, 30.0, 90.0])
        y = kr * rgb[0] + (1 - kr - kb) * rgb[1] + kb * rgb[2]
        yuv = np.array(
            [16 + 219 * y / 255, 128 + 224 * (rgb[2] - y) / (2 * (1 - kb)) / 255,
             128 + 224 * (rgb[0] - y) / (2 * (1 - kr)) / 255]
        )  # fmt: skip
        assert np.allclose(m @ yuv + off, rgb, atol=1e-3)
    m, off = nvdec.yuv_to_rgb_matrix(2, full_range=True)
    assert np.allclose(m @ np.array([255.0, 128.0, 128.0]) + off, 255.0, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# nvdec, GPU side against the PyAV-backed stand-in


def _cpu_pool(fake: FakeNvc, **kwargs: Any) -> nvdec.NvdecDecoderPool:
    return nvdec.NvdecDecoderPool(module=fake, device="cpu", **kwargs)


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("clip", ["h264_clip", "hevc_clip", "vp9_clip", "rotated_clip"])
@pytest.mark.parametrize("policy", ["fast", "exact"])
def test_fake_nvdec_matches_pyav(clip: str, policy: str, request: pytest.FixtureRequest) -> None:
    import torch

    path: Path = request.getfixturevalue(clip)
    spec = SamplingSpec(frames=6, height=64, width=32, policy=policy)  # type: ignore[arg-type]
    gpu = nvdec.sample_nvdec_cuda(path, spec, DecodeLimits(), pool=_cpu_pool(FakeNvc()))
    assert gpu.frames.shape == (6, 3, 64, 32) and gpu.frames.dtype == torch.uint8
    clip_ = gpu.to_host()
    ref = sample_frames(path, spec, backend="pyav")
    assert clip_.frames.shape == ref.frames.shape == (6, 64, 32, 3)
    assert clip_.timestamps == ref.timestamps and clip_.targets == ref.targets
    # NVDEC decodes every planned packet; PyAV skips the frames nothing refers to.
    assert clip_.frames_decoded >= ref.frames_decoded
    assert clip_.packets_planned == ref.packets_planned
    assert (clip_.width, clip_.height, clip_.rotation) == (ref.width, ref.height, ref.rotation)
    assert clip_.keyframes == ref.keyframes and clip_.duration == ref.duration
    # swscale's RGB has half-resolution chroma; luma is area-averaged alike
    assert np.abs(_luma(clip_.frames) - _luma(ref.frames)).mean() < 3.0
    if clip == "rotated_clip":
        assert _red_band_on_top(clip_.frames)
    else:
        xs = [red_centroid_x(f) for f in clip_.frames]
        assert all(np.isfinite(xs)) and all(b > a for a, b in itertools.pairwise(xs))


@pytest.mark.parametrize(("open_gop", "latency"), [(False, "NATIVE"), (True, "LOW")])
def test_flushes_only_in_front_of_non_idr_keyframes(
    tmp_path: Path, open_gop: bool, latency: str
) -> None:
    """By default the decoder is flushed after the last GOP and in front of a keyframe that is
    not an IDR (an open GOP's recovery point, whose leading frames refer to the GOP before):
    the frames are those of a flush after every GOP. The latency mode reaches the decoder."""
    path = encode_clip(tmp_path / "c.mp4", seconds=4.0, gop=25, open_gop=open_gop)
    spec = SamplingSpec(frames=6, height=64, width=32)
    got, flushes = {}, {}
    for every in (True, False):
        fake = FakeNvc()
        pool = _cpu_pool(fake, flush_every_gop=every, latency=latency)
        got[every] = nvdec.sample_nvdec_cuda(path, spec, DecodeLimits(), pool=pool)
        (dec,) = fake.decoders
        assert dec.kwargs["latency"] == latency
        flushes[every] = dec.flushes
    with pyav_backend.indexed(path, DecodeLimits()) as (_, _, stream, index):
        plan = pyav_backend.plan_frames(index, spec)
        gops = nvdec.planned_access_units(index, plan, stream)
    assert len(gops) > 2 and all(g.idr for g in gops) != open_gop
    assert flushes == {True: len(gops), False: 1 + sum(not g.idr for g in gops[1:])}
    assert got[True].timestamps == got[False].timestamps
    assert np.array_equal(got[True].frames.numpy(), got[False].frames.numpy())


def test_registered_backend_copies_to_host(
    h264_clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeNvc()
    monkeypatch.setattr(nvdec, "_POOL", _cpu_pool(fake))
    a = sample_frames(h264_clip, SMALL, backend="nvdec")
    b = sample_frames(h264_clip.read_bytes(), SMALL, backend="nvdec")
    assert a.frames.shape == (6, 64, 32, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames) and a.timestamps == b.timestamps
    assert len(fake.decoders) == 1


def test_float_output(h264_clip: Path) -> None:
    pool = _cpu_pool(FakeNvc())
    u8 = nvdec.sample_nvdec_cuda(h264_clip, SMALL, DecodeLimits(), pool=pool)
    f32 = nvdec.sample_nvdec_cuda(h264_clip, SMALL, DecodeLimits(), pool=pool, dtype="float32")
    assert str(f32.frames.dtype) == "torch.float32"
    assert float(f32.frames.min()) >= 0.0 and float(f32.frames.max()) <= 1.0
    assert np.abs(f32.frames.numpy() * 255 - u8.frames.numpy()).max() <= 0.5 + 1e-4
    assert np.array_equal(f32.to_host().frames, u8.to_host().frames)


def test_pool_reconfigures_one_session_across_sizes(
    h264_clip: Path, rotated_clip: Path, clip_dir: Path
) -> None:
    small = encode_clip(clip_dir / "small.mp4", width=64, height=48, seconds=1.0)
    fake = FakeNvc()
    pool = _cpu_pool(fake)
    for path in (h264_clip, rotated_clip, small, small, h264_clip):
        nvdec.sample_nvdec_cuda(path, SMALL, DecodeLimits(), pool=pool)
    (dec,) = fake.decoders
    assert dec.codec == "H264" and dec.max_size == (1920, 1920)
    assert dec.kwargs["usedevicememory"] is True
    # coded sizes: 160x288, then 160x96 (stored turned), 64x48, 64x48 again, 160x288
    assert dec.reconfigured == [(160, 96), (64, 48), (160, 288)]
    assert (pool.created, pool.reconfigured) == (1, 3)
    assert dec.flushes >= 5  # one flush per planned GOP


def test_pool_grows_for_a_larger_clip(h264_clip: Path, clip_dir: Path) -> None:
    small = encode_clip(clip_dir / "small.mp4", width=64, height=48, seconds=1.0)
    fake = FakeNvc()
    pool = _cpu_pool(fake, max_width=64, max_height=64)
    nvdec.sample_nvdec_cuda(small, SMALL, DecodeLimits(), pool=pool)
    nvdec.sample_nvdec_cuda(h264_clip, SMALL, DecodeLimits(), pool=pool)
    nvdec.sample_nvdec_cuda(small, SMALL, DecodeLimits(), pool=pool)
    assert [d.max_size for d in fake.decoders] == [(64, 64), (160, 288)]
    assert fake.decoders[1].reconfigured == [(64, 48)]
    assert pool.created == 2


def test_pool_keeps_sessions_per_codec(h264_clip: Path, hevc_clip: Path) -> None:
    fake = FakeNvc()
    pool = _cpu_pool(fake)
    for path in (h264_clip, hevc_clip, h264_clip, hevc_clip):
        nvdec.sample_nvdec_cuda(path, SMALL, DecodeLimits(), pool=pool)
    assert sorted(d.codec for d in fake.decoders) == ["H264", "HEVC"]


class _FailingDecoder(FakeDecoder):
    def Decode(self, pkt: Any) -> Any:
        raise RuntimeError("Reconfigure Not supported for bit depth change")


class _FailingFirst(FakeNvc):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def CreateDecoder(self, *, codec: str, maxwidth: int, maxheight: int, **kw: Any) -> Any:
        if self.failures:
            self.failures -= 1
            dec: FakeDecoder = _FailingDecoder(codec, maxwidth, maxheight, **kw)
        else:
            dec = FakeDecoder(codec, maxwidth, maxheight, **kw)
        self.decoders.append(dec)
        return dec


def test_decoder_error_retries_on_a_fresh_session(h264_clip: Path) -> None:
    fake = _FailingFirst(failures=1)
    pool = _cpu_pool(fake)
    clip = nvdec.sample_nvdec_cuda(h264_clip, SMALL, DecodeLimits(), pool=pool)
    assert clip.frames.shape[0] == 6 and pool.created == 2
    fake = _FailingFirst(failures=2)
    with pytest.raises(InvalidVideo, match="NVDEC could not decode"):
        nvdec.sample_nvdec_cuda(h264_clip, SMALL, DecodeLimits(), pool=_cpu_pool(fake))


def test_fake_nvdec_limits(h264_clip: Path) -> None:
    data = h264_clip.read_bytes()
    cases = [
        (DecodeLimits(max_bytes=100), "bytes"),
        (DecodeLimits(max_pixels=100 * 100), "pixels"),
        (DecodeLimits(max_duration_s=1.0), "duration"),
        (DecodeLimits(max_packets=10), "frames"),
        (DecodeLimits(max_decode_s=-1.0), "took longer"),
    ]
    pool = _cpu_pool(FakeNvc())
    for limits, match in cases:
        with pytest.raises(LimitExceeded, match=match):
            nvdec.sample_nvdec_cuda(data, SMALL, limits, pool=pool)
    # a clip cut short by the time limit leaves the session usable
    assert nvdec.sample_nvdec_cuda(data, SMALL, DecodeLimits(), pool=pool).frames.shape[0] == 6


@pytest.mark.parametrize("data", GARBAGE, ids=["empty", "zeros", "text"])
def test_fake_nvdec_garbage_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidVideo):
        nvdec.sample_nvdec_cuda(data, SMALL, DecodeLimits(), pool=_cpu_pool(FakeNvc()))
