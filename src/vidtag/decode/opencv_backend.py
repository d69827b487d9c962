"""The naive OpenCV baseline: one `CAP_PROP_POS_FRAMES` seek and one `read()` per target.

It exists to be measured against, not to be fast: every seek goes back to the previous keyframe
and decodes forward, and OpenCV converts each full-size frame to BGR before we resize it. It reads
no packet index, so `frames_decoded` counts successful `read()` calls (OpenCV decodes more), and
`keyframes` is 0 (unknown). Needs the optional `opencv-python-headless` package (extra `opencv`).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vidtag.decode.limits import DecodeLimits
from vidtag.decode.result import DecodedClip
from vidtag.decode.source import FileRef, Input, SpoolRef, open_same, spooled_bytes
from vidtag.decode.spec import SamplingSpec
from vidtag.errors import BackendUnavailable, InvalidVideo, LimitExceeded

_FOURCC_CODECS = {
    "avc1": "h264",
    "avc3": "h264",
    "h264": "h264",
    "x264": "h264",
    "hvc1": "hevc",
    "hev1": "hevc",
    "hevc": "hevc",
    "h265": "hevc",
    "vp09": "vp9",
    "vp90": "vp9",
    "av01": "av1",
}


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise BackendUnavailable(
            "decode backend 'opencv' needs the opencv-python-headless package "
            "(pip install 'vidtag[opencv]')"
        ) from exc
    return cv2


def _codec_name(fourcc: float) -> str:
    raw = (int(fourcc) & 0xFFFFFFFF).to_bytes(4, "little")
    tag = raw.decode("ascii", errors="replace").strip("\x00 ").lower()
    return _FOURCC_CODECS.get(tag, tag or "unknown")


def _check_size(size: int, limits: DecodeLimits) -> None:
    if size > limits.max_bytes:
        raise LimitExceeded(f"video is {size} bytes, the limit is {limits.max_bytes}")
    if size == 0:
        raise InvalidVideo("empty input")


def sample_opencv(source: Input, spec: SamplingSpec, limits: DecodeLimits) -> DecodedClip:
    """Seek-and-read each target with cv2.VideoCapture; same limits and errors as `pyav`."""
    cv2 = _cv2()
    t0 = time.perf_counter()
    tmp: str | None = None
    if isinstance(source, SpoolRef):
        source = spooled_bytes(source)
    if isinstance(source, bytes | bytearray | memoryview):
        _check_size(len(source), limits)
        # VideoCapture reads only files: spill the bytes, removed again in `finally`.
        with tempfile.NamedTemporaryFile(prefix="vidtag-", suffix=".video", delete=False) as f:
            f.write(source)
            tmp = path = f.name
    else:
        if isinstance(source, FileRef):  # still the file that was checked (a baseline: the
            os.close(open_same(source))  # name is read again below)
        path = os.fspath(source)
        if not Path(path).is_file():
            raise InvalidVideo(f"no such file: {path}")
        _check_size(Path(path).stat().st_size, limits)
    try:
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        try:
            return _sample(cv2, cap, spec, limits, t0)
        finally:
            cap.release()
    finally:
        if tmp is not None:
            os.unlink(tmp)


def _sample(cv2: Any, cap: Any, spec: SamplingSpec, limits: DecodeLimits, t0: float) -> DecodedClip:
    if not cap.isOpened():
        raise InvalidVideo("not a readable video container")
    # OpenCV's angle is the clockwise correction; vidtag reports the display matrix's
    # counter-clockwise rotation, as PyAV's `frame.rotation` does.
    rotation = -round(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0) % 360
    # Auto-orientation (the default) rotates every frame and reports the display size; a build
    # that ignores it returns coded frames, which we turn after the (cheaper) resize.
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    turn = 0 if cap.get(cv2.CAP_PROP_ORIENTATION_AUTO) else rotation // 90
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if turn % 2:
        width, height = height, width
    if width <= 0 or height <= 0:
        raise InvalidVideo("video stream has no frame size")
    if width * height > limits.max_pixels:
        raise LimitExceeded(
            f"frame size {width}x{height} exceeds the limit of {limits.max_pixels} pixels"
        )
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if fps <= 0 or count <= 0:
        raise InvalidVideo("video stream has no frame rate or frame count")
    if count > limits.max_packets:
        raise LimitExceeded(f"video has more than {limits.max_packets} frames")
    duration = count / fps
    if duration > limits.max_duration_s:
        raise LimitExceeded(
            f"duration {duration:.1f} s exceeds the limit of {limits.max_duration_s:.0f} s"
        )
    targets = spec.targets(duration, fps)
    deadline = time.monotonic() + limits.max_decode_s
    got: list[tuple[np.ndarray, float] | None] = []
    for t in targets:
        if time.monotonic() > deadline:
            raise LimitExceeded(f"decoding took longer than {limits.max_decode_s:.1f} s")
        cap.set(cv2.CAP_PROP_POS_FRAMES, min(round(t * fps), count - 1))
        ok, bgr = cap.read()
        if not ok or bgr is None:
            got.append(None)
            continue
        stamp = float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        size = (spec.height, spec.width) if turn % 2 else (spec.width, spec.height)
        small = cv2.cvtColor(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        got.append((np.ascontiguousarray(np.rot90(small, k=turn)), stamp))
    if time.monotonic() > deadline:
        raise LimitExceeded(f"decoding took longer than {limits.max_decode_s:.1f} s")
    ok_idx = [i for i, g in enumerate(got) if g is not None]
    codec = _codec_name(cap.get(cv2.CAP_PROP_FOURCC))
    if not ok_idx:
        raise InvalidVideo(f"OpenCV decoded no frame of the video (codec {codec})")
    # A target whose read failed gets the nearest target that succeeded.
    picks: list[tuple[np.ndarray, float]] = []
    for i in range(len(got)):
        j = min(ok_idx, key=lambda k: abs(k - i))
        g = got[j]
        assert g is not None
        picks.append(g)
    stamps = tuple(s for _, s in picks)
    dev = float(np.mean(np.abs(np.asarray(stamps) - np.asarray(targets))))
    return DecodedClip(
        frames=np.stack([f for f, _ in picks]),
        timestamps=stamps,
        targets=tuple(targets),
        frames_decoded=len(ok_idx),
        packets_planned=len(targets),
        corrupt_packets=len(got) - len(ok_idx),
        mean_deviation=dev,
        width=width,
        height=height,
        duration=duration,
        fps=fps,
        codec=codec,
        rotation=rotation,
        keyframes=0,
        seconds=time.perf_counter() - t0,
    )
