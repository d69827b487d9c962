"""Small MP4 clips encoded in memory with PyAV, for warm-ups (no file, no test media)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np


def encode_in_memory(
    width: int,
    height: int,
    frames: int,
    image: Callable[[int], np.ndarray],
    *,
    encoder: str = "libx264",
    options: dict[str, str] | None = None,
    rate: int = 12,
) -> bytes:
    """An MP4 clip of `frames` frames, frame i being `image(i)` ((height, width, 3) uint8 RGB),
    yuv420p. Raises what PyAV raises (e.g. an encoder this FFmpeg build lacks)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream(encoder, rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {k: v for k, v in (options or {}).items()}
        for i in range(frames):
            img = np.ascontiguousarray(image(i))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()
