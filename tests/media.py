"""Small clips for tests, encoded with PyAV: a coloured square moving right over stripes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def _video_options(codec: str, gop: int | None, bframes: int, open_gop: bool) -> dict[str, str]:
    keyint = gop or 100000
    fixed = f"keyint={keyint}:min-keyint={keyint}:scenecut=0"
    if codec == "libx264":
        return {
            "preset": "ultrafast" if bframes == 0 else "veryfast",
            "x264-params": f"{fixed}:bframes={bframes}" + (":open-gop=1" if open_gop else ""),
            "crf": "26",
        }
    if codec == "libx265":
        return {"preset": "ultrafast", "x265-params": f"{fixed}:log-level=error"}
    if codec == "libsvtav1":
        return {"preset": "12", "svtav1-params": f"keyint={keyint}:scd=0:lp=1"}
    return {}


def encode_clip(
    path: Path,
    *,
    width: int = 160,
    height: int = 288,
    fps: int = 25,
    seconds: float = 4.0,
    gop: int | None = 25,
    codec: str = "libx264",
    bframes: int = 2,
    pix_fmt: str = "yuv420p",
    vfr: bool = False,
    rotation: int = 0,
    open_gop: bool = False,
    audio: bool = False,
    faststart: bool = False,
) -> Path:
    """Write a clip; `gop=None` puts a single keyframe at the start. `vfr` jitters frame
    durations (1-3 ticks of 1/(2 fps)); `rotation` sets the display matrix; `audio` adds an
    AAC track; `faststart` puts the index (moov) before the media data."""
    n = round(fps * seconds)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        tick = Fraction(1, 2 * fps) if vfr else Fraction(1, fps)
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = stream.codec_context.time_base = tick
        if codec not in ("libx264", "libx265", "libsvtav1") and gop:
            stream.codec_context.gop_size = gop
        stream.options = _video_options(codec, gop, bframes, open_gop)
        if rotation:
            stream.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=16000, layout="mono") if audio else None
        yy, xx = np.mgrid[0:height, 0:width]
        bg = np.where(((xx + yy) // 12) % 2 == 0, 60, 190).astype(np.uint8)
        base = np.stack([bg, bg // 2 + 40, 255 - bg], axis=-1)
        side = max(8, width // 5)
        steps = np.random.default_rng(0).integers(1, 4, n) if vfr else np.full(n, 1)
        pts = np.concatenate([[0], np.cumsum(steps)[:-1]])
        for i in range(n):
            img = base.copy()
            x = int(i / max(n - 1, 1) * (width - side))
            y = height // 2 - side // 2
            img[y : y + side, x : x + side] = (250, 30, 30)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)
            frame.pts = int(pts[i])
            frame.time_base = tick
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
        if sound is not None:
            _add_audio(out, sound, seconds)
    return path


def _add_audio(out: av.container.OutputContainer, sound: av.AudioStream, seconds: float) -> None:
    rate = 16000
    wave = (0.1 * np.sin(np.arange(int(seconds * rate)) * 0.05)).astype(np.float32)
    for k in range(0, len(wave), 1024):
        chunk = av.AudioFrame.from_ndarray(wave[None, k : k + 1024], format="flt", layout="mono")
        chunk.sample_rate, chunk.pts = rate, k
        for pkt in sound.encode(chunk):
            out.mux(pkt)
    for pkt in sound.encode():
        out.mux(pkt)


def red_centroid_x(frame: np.ndarray) -> float:
    """Mean column of the strongly red pixels of an RGB frame."""
    mask = (frame[..., 0] > 180) & (frame[..., 1] < 90) & (frame[..., 2] < 120)
    cols = np.nonzero(mask)[1]
    return float(cols.mean()) if cols.size else float("nan")
