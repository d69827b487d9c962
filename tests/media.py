"""Small clips for tests, encoded with PyAV: a coloured square moving right over stripes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


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
) -> Path:
    """Write a clip; `gop=None` puts a single keyframe at the start."""
    n = round(fps * seconds)
    options: dict[str, str] = {}
    if codec == "libx264":
        keyint = gop or 100000
        options = {
            "preset": "ultrafast" if bframes == 0 else "veryfast",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes={bframes}",
            "crf": "26",
        }
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec != "libx264" and gop:
            stream.codec_context.gop_size = gop
        stream.options = options
        yy, xx = np.mgrid[0:height, 0:width]
        bg = np.where(((xx + yy) // 12) % 2 == 0, 60, 190).astype(np.uint8)
        base = np.stack([bg, bg // 2 + 40, 255 - bg], axis=-1)
        side = max(8, width // 5)
        for i in range(n):
            img = base.copy()
            x = int(i / max(n - 1, 1) * (width - side))
            y = height // 2 - side // 2
            img[y : y + side, x : x + side] = (250, 30, 30)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def red_centroid_x(frame: np.ndarray) -> float:
    """Mean column of the strongly red pixels of an RGB frame."""
    mask = (frame[..., 0] > 180) & (frame[..., 1] < 90) & (frame[..., 2] < 120)
    cols = np.nonzero(mask)[1]
    return float(cols.mean()) if cols.size else float("nan")
