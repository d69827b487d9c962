"""Write a rendered clip to its container with PyAV: codec settings, GOP, VFR, rotation, audio.

Rotation: `VideoStream.set_display_rotation(90)` (PyAV >= 17) writes a display matrix that FFmpeg
reads as "rotate 90 degrees counter-clockwise before display" (in MP4 the `tkhd` matrix; MKV and
WebM carry it too). Frames are stored rotated 90 degrees clockwise, so a player that applies the
matrix shows them upright. Reading it back in PyAV 18.1 needs a decoded frame: `frame.rotation`
is 90 (and `frame.side_data` holds a DISPLAYMATRIX entry); demuxed packets carry no display
matrix, `stream.metadata` has no 'rotate' key and streams have no `side_data`. The upright
image is `np.rot90(frame.to_ndarray(format="rgb24"), k=frame.rotation // 90)`; the coded size
(`stream.codec_context.width/height`) is the display size transposed.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from vidtag.synth.render import Renderer
from vidtag.synth.spec import Encoding
from vidtag.synth.timing import VFR_MS

ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1"}
GOP_SECONDS = {"1s": 1, "4s": 4, "8s": 8}
AUDIO_RATE = 48000
# Same seed -> same bytes: no random Matroska UIDs or version strings in the container.
BITEXACT = {"fflags": "+bitexact"}
SVT_PRESET = "11"  # SVT-AV1 4.x maps 12 and 13 to 11 (fastest non-realtime preset)


def gop_frames(enc: Encoding) -> int:
    """Keyframe interval in frames; `cuts` gets one longer than the clip (no periodic keys)."""
    if enc.gop == "cuts":
        return enc.n_frames + 1
    return GOP_SECONDS[enc.gop] * enc.fps


def video_options(enc: Encoding) -> dict[str, str]:
    """Encoder options: fastest presets, fixed GOP without scene-cut keyframes, 1 thread.

    x264 needs `cpu-independent=1`: without it, identical input gave run-to-run different
    bitstreams at some sizes (96x160, 270x480) on this AVX-512 CPU (masking AVX-512 out via
    `asm=` also cured it); with it the bytes are also the same on other CPUs.
    """
    g, crf = gop_frames(enc), str(enc.crf)
    fixed = f"keyint={g}:min-keyint={g}:scenecut=0"
    if enc.codec == "h264":
        return {
            "preset": "veryfast", "profile": "high", "crf": crf, "forced-idr": "1",
            "x264-params": f"{fixed}:threads=1:bframes=3:subme=1:cpu-independent=1",
        }  # fmt: skip
    if enc.codec == "hevc":
        return {
            "preset": "ultrafast", "crf": crf, "forced-idr": "1",
            "x265-params": f"{fixed}:pools=none:frame-threads=1:log-level=error",
        }  # fmt: skip
    if enc.codec == "vp9":
        return {
            "deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": crf, "b": "0",
            "keyint_min": str(g),
        }  # fmt: skip
    if enc.codec == "av1":
        return {"preset": SVT_PRESET, "crf": crf, "svtav1-params": "scd=0:lp=1"}
    raise ValueError(f"unknown codec {enc.codec!r}")


def tone(seed: int, seconds: float) -> np.ndarray:
    """A quiet, deterministic mono signal: an amplitude-modulated tone plus faint noise."""
    rng = np.random.default_rng(seed)
    freq = float(rng.uniform(150.0, 900.0))
    t = np.arange(round(seconds * AUDIO_RATE)) / AUDIO_RATE
    wave = 0.2 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(np.pi * t))
    return (wave + rng.normal(0.0, 0.02, t.size)).astype(np.float32)


class AudioTrack:
    """Mono AAC (MP4) or Opus (WebM/MKV) track, encoded in step with the video."""

    def __init__(self, out: av.container.OutputContainer, enc: Encoding) -> None:
        codec = "aac" if enc.container == "mp4" else "libopus"
        stream = out.add_stream(codec, rate=AUDIO_RATE, layout="mono")
        assert isinstance(stream, av.AudioStream)
        self.stream = stream
        self.stream.codec_context.bit_rate = 64000
        self.out = out
        self.signal = tone(enc.audio_seed, enc.duration)
        self.written = 0

    def write_until(self, seconds: float) -> None:
        n = min(int(seconds * AUDIO_RATE), self.signal.size) - self.written
        if n <= 0:
            return
        frame = av.AudioFrame.from_ndarray(
            self.signal[None, self.written : self.written + n], format="fltp", layout="mono"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.written
        frame.time_base = Fraction(1, AUDIO_RATE)
        self.written += n
        for packet in self.stream.encode(frame):
            self.out.mux(packet)

    def close(self, seconds: float) -> None:
        self.write_until(seconds)
        for packet in self.stream.encode(None):
            self.out.mux(packet)


def _add_video(out: av.container.OutputContainer, enc: Encoding) -> av.VideoStream:
    vs = out.add_stream(ENCODERS[enc.codec], rate=enc.fps, options=video_options(enc))
    assert isinstance(vs, av.VideoStream)
    vs.width, vs.height = (enc.height, enc.width) if enc.rotation else (enc.width, enc.height)
    vs.pix_fmt = "yuv420p"
    cc = vs.codec_context
    cc.thread_count = 1
    cc.gop_size = gop_frames(enc)
    if enc.vfr:
        vs.time_base = cc.time_base = Fraction(1, VFR_MS)
    if enc.codec == "hevc":
        cc.codec_tag = "hvc1"
    if enc.rotation:
        vs.set_display_rotation(enc.rotation)
    return vs


def write_clip(path: Path, renderer: Renderer) -> None:
    """Render every frame of `renderer` and encode it (plus audio if asked) into `path`."""
    enc = renderer.spec.encoding
    times = renderer.times
    with av.open(str(path), "w", container_options=BITEXACT) as out:
        vs = _add_video(out, enc)
        audio = AudioTrack(out, enc) if enc.audio else None
        for i in range(len(times)):
            img = renderer.frame(i)
            if enc.rotation:
                img = img.transpose(Image.Transpose.ROTATE_270)  # 90 degrees clockwise
            frame = av.VideoFrame.from_image(img).reformat(format="yuv420p")
            frame.pts = round(times[i] * VFR_MS) if enc.vfr else i
            if enc.gop == "cuts" and i == renderer.cut:
                frame.pict_type = av.video.frame.PictureType.I
            for packet in vs.encode(frame):
                out.mux(packet)
            if audio is not None:
                audio.write_until(float(times[i]) + 1.0 / enc.fps)
        for packet in vs.encode(None):
            out.mux(packet)
        if audio is not None:
            audio.close(enc.duration)
