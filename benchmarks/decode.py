"""Decode benchmark: `sample_frames` (fast, exact) against OpenCV, PyAV and torchcodec baselines.

Builds (once, cached in build/bench-decode/corpus) 30 fps clips over an encoding matrix: size
540x960 / 720x1280 / 1080x1920, GOP 1 s / 4 s / 8 s / 250 frames / cuts-only (keyframes only
at the 2-3 scene cuts), codec H.264 (MP4) / HEVC (MP4) / VP9 (WebM) / AV1 (MKV), 15 s and
30 s. By default a base clip (540x960 H.264 GOP 4 s 30 s) plus one-dimension-at-a-time variations
around it; --full builds the whole product. Then, per clip, every method samples 8 frames at the
segment centres as 96x160 RGB; the repetitions are interleaved (a noisy machine hurts all methods
alike). Prints a table per clip and a line per (size, gop, codec) group; writes JSON.

    python benchmarks/decode.py --quick
    python benchmarks/decode.py --only 540x960-h264 --repeat 3
    python benchmarks/decode.py --full --json build/bench-decode/full.json
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from vidtag.decode import SamplingSpec, sample_frames
from vidtag.decode.spec import Policy, Threading
from vidtag.synth.encode import ENCODERS, SVT_PRESET
from vidtag.synth.matrix import DEFAULT_CONTAINER

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "build" / "bench-decode"

SIZES = ((540, 960), (720, 1280), (1080, 1920))  # display width x height, portrait
GOPS = ("1s", "4s", "8s", "250f", "cuts")
CODECS = ("h264", "hevc", "vp9", "av1")
DURATIONS = (15, 30)
FPS = 30
CRF = {"h264": 23, "hevc": 28, "vp9": 34, "av1": 35}  # roughly comparable quality
FRAMES, OUT_H, OUT_W = 8, 160, 96
REFERENCE = "ours-fast"


# ---------------------------------------------------------------------------------------------
# Corpus


@dataclass(frozen=True)
class ClipConfig:
    width: int
    height: int
    codec: str
    gop: str  # "1s" | "4s" | "8s" | "250f" | "cuts"
    duration: int  # seconds

    @property
    def n_frames(self) -> int:
        return self.duration * FPS

    @property
    def container(self) -> str:
        return DEFAULT_CONTAINER[self.codec]

    @property
    def name(self) -> str:
        return (
            f"{self.width}x{self.height}-{self.codec}-gop{self.gop}-{self.duration}s"
            f".{self.container}"
        )

    @property
    def group(self) -> str:
        return f"{self.width}x{self.height} {self.codec} gop {self.gop}"

    def keyint(self) -> int:
        """Frames between periodic keyframes; cuts-only gets one longer than the clip."""
        if self.gop == "cuts":
            return self.n_frames + 1
        if self.gop.endswith("f"):
            return int(self.gop[:-1])
        return int(self.gop[:-1]) * FPS

    def cut_frames(self) -> list[int]:
        """Scene changes: 2 in a short clip, 3 in a long one, spread and a little uneven."""
        n_cuts = 2 if self.duration < 20 else 3
        fracs = [(k + 1) / (n_cuts + 1) + 0.07 * (-1) ** k for k in range(n_cuts)]
        return [round(f * self.n_frames) for f in fracs]


BASE = ClipConfig(540, 960, "h264", "4s", 30)


def default_corpus() -> list[ClipConfig]:
    """The base clip and every one-dimension variation around it."""
    out = [BASE]
    out += [ClipConfig(w, h, BASE.codec, BASE.gop, BASE.duration) for w, h in SIZES]
    out += [ClipConfig(BASE.width, BASE.height, BASE.codec, g, BASE.duration) for g in GOPS]
    out += [ClipConfig(BASE.width, BASE.height, c, BASE.gop, BASE.duration) for c in CODECS]
    out += [ClipConfig(BASE.width, BASE.height, BASE.codec, BASE.gop, d) for d in DURATIONS]
    out += [ClipConfig(BASE.width, BASE.height, BASE.codec, "250f", 15)]  # 2 keyframes only
    return list(dict.fromkeys(out))


def full_corpus() -> list[ClipConfig]:
    return [
        ClipConfig(w, h, c, g, d)
        for (w, h), c, g, d in itertools.product(SIZES, CODECS, GOPS, DURATIONS)
    ]


def video_options(cfg: ClipConfig) -> dict[str, str]:
    """Fast presets, fixed keyframe interval, no scene-cut keyframes (forced ones only)."""
    g, crf = cfg.keyint(), str(CRF[cfg.codec])
    fixed = f"keyint={g}:min-keyint={g}:scenecut=0"
    if cfg.codec == "h264":
        return {
            "preset": "veryfast", "profile": "high", "crf": crf, "forced-idr": "1",
            "x264-params": f"{fixed}:bframes=3",
        }  # fmt: skip
    if cfg.codec == "hevc":
        return {
            "preset": "ultrafast", "crf": crf, "forced-idr": "1",
            "x265-params": f"{fixed}:log-level=error",
        }  # fmt: skip
    if cfg.codec == "vp9":
        return {
            "deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": crf, "b": "0",
            "keyint_min": str(g),
        }  # fmt: skip
    if cfg.codec == "av1":
        return {"preset": SVT_PRESET, "crf": crf, "svtav1-params": f"keyint={g}:scd=0"}
    raise ValueError(f"unknown codec {cfg.codec!r}")


def _smooth(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Low-frequency random field in [0, 1], float32 (h, w)."""
    small = (rng.random((h // cell + 2, w // cell + 2)) * 255).astype(np.uint8)
    img = Image.fromarray(small).resize((w + 2 * cell, h + 2 * cell), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)[cell : cell + h, cell : cell + w] / 255.0


@dataclass
class _Shape:
    y: np.ndarray  # textured luma patch (h, w)
    u: int
    v: int
    mask: np.ndarray | None  # None: rectangle; else a disc, full resolution
    pos: tuple[float, float]
    vel: tuple[float, float]  # pixels per frame


@dataclass
class _Scene:
    y: np.ndarray  # padded background planes, panned by up to 2 * pad pixels
    u: np.ndarray
    v: np.ndarray
    pad: int
    period: tuple[float, float]  # pan periods in frames (vertical, horizontal)
    phase: tuple[float, float]
    shapes: list[_Shape] = field(default_factory=list)


def _bounce(p: float, hi: int) -> int:
    """Position p reflected into [0, hi], rounded down to even (chroma alignment)."""
    if hi <= 0:
        return 0
    q = p % (2 * hi)
    return int(q if q <= hi else 2 * hi - q) // 2 * 2


class Renderer:
    """Cheap YUV 4:2:0 frames: a panning textured background, moving textured rectangles and
    discs, static grain and per-frame noise; a new background and shape set at each cut."""

    def __init__(self, cfg: ClipConfig, seed: int = 7) -> None:
        self.w, self.h = cfg.width, cfg.height
        rng = np.random.default_rng(seed)
        self.cuts = cfg.cut_frames()
        self.scenes = [self._scene(rng) for _ in range(len(self.cuts) + 1)]
        noise = np.clip(rng.normal(0.0, 2.0, (6, self.h, self.w)), -6, 6)
        self.noise = noise.astype(np.int8).view(np.uint8)  # added modulo 256: no wrap-around
        self.rng = rng

    def _scene(self, rng: np.random.Generator) -> _Scene:
        pad = max(16, self.w // 25) // 2 * 2
        bh, bw = self.h + 2 * pad, self.w + 2 * pad
        yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
        ang, period = rng.uniform(0, np.pi), rng.uniform(12, 48) * self.w / 540
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(ang) + yy * np.sin(ang)) / period)
        grain = rng.normal(0.0, 1.0, (bh, bw)).astype(np.float32)
        luma = (
            0.55 * _smooth(rng, bh, bw, max(8, self.w // 12))
            + 0.25 * stripes * _smooth(rng, bh, bw, max(8, self.w // 4))
            + 0.05 * grain
            + 0.1
        )
        y = (24 + 204 * np.clip(luma, 0, 1)).astype(np.uint8)
        u, v = (
            (128 + 90 * (_smooth(rng, bh // 2, bw // 2, max(8, self.w // 10)) - 0.5)).astype(
                np.uint8
            )
            for _ in range(2)
        )
        scene = _Scene(
            y, u, v, pad,
            period=(rng.uniform(90, 240), rng.uniform(90, 240)),
            phase=(rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)),
        )  # fmt: skip
        for k in range(int(rng.integers(4, 8))):
            d = int(rng.uniform(0.08, 0.3) * self.w) // 2 * 2
            sh, sw = (d, d) if k % 2 else (d, int(d * rng.uniform(0.6, 1.6)) // 2 * 2)
            sy, sx = np.mgrid[0:sh, 0:sw].astype(np.float32)
            tex = 0.5 + 0.5 * np.sin(sx / rng.uniform(3, 9) + sy / rng.uniform(3, 9))
            base = rng.uniform(40, 200)
            patch = np.clip(base + 25 * tex + 6 * rng.normal(0, 1, (sh, sw)), 24, 228)
            r = d / 2
            mask = (sy - r + 0.5) ** 2 + (sx - r + 0.5) ** 2 <= r * r if k % 2 else None
            speed = rng.uniform(0.5, 4.0) * self.w / 540
            ang = rng.uniform(0, 2 * np.pi)
            scene.shapes.append(
                _Shape(
                    y=patch.astype(np.uint8),
                    u=int(rng.integers(40, 216)),
                    v=int(rng.integers(40, 216)),
                    mask=mask,
                    pos=(rng.uniform(0, self.h - sh), rng.uniform(0, self.w - sw)),
                    vel=(speed * np.sin(ang), speed * np.cos(ang)),
                )
            )
        return scene

    def frame(self, i: int, buf: np.ndarray) -> None:
        """Render frame `i` into `buf`, a (h * 3 // 2, w) yuv420p array."""
        h, w = self.h, self.w
        flat = buf.reshape(-1)
        y = flat[: h * w].reshape(h, w)
        u = flat[h * w : h * w * 5 // 4].reshape(h // 2, w // 2)
        v = flat[h * w * 5 // 4 :].reshape(h // 2, w // 2)
        scene = self.scenes[sum(i >= c for c in self.cuts)]
        p = scene.pad
        oy, ox = (
            int(p + p * math.sin(2 * math.pi * i / per + ph)) // 2 * 2
            for per, ph in zip(scene.period, scene.phase, strict=True)
        )
        y[:] = scene.y[oy : oy + h, ox : ox + w]
        u[:] = scene.u[oy // 2 : oy // 2 + h // 2, ox // 2 : ox // 2 + w // 2]
        v[:] = scene.v[oy // 2 : oy // 2 + h // 2, ox // 2 : ox // 2 + w // 2]
        for s in scene.shapes:
            sh, sw = s.y.shape
            r0 = _bounce(s.pos[0] + s.vel[0] * i, h - sh)
            c0 = _bounce(s.pos[1] + s.vel[1] * i, w - sw)
            ys = y[r0 : r0 + sh, c0 : c0 + sw]
            us = u[r0 // 2 : (r0 + sh) // 2, c0 // 2 : (c0 + sw) // 2]
            vs = v[r0 // 2 : (r0 + sh) // 2, c0 // 2 : (c0 + sw) // 2]
            if s.mask is None:
                ys[:] = s.y
                us[:] = s.u
                vs[:] = s.v
            else:
                np.copyto(ys, s.y, where=s.mask)
                us[s.mask[::2, ::2]] = s.u
                vs[s.mask[::2, ::2]] = s.v
        np.add(y, self.noise[int(self.rng.integers(len(self.noise)))], out=y)


def encode_clip(
    cfg: ClipConfig, path: Path, *, fps: int = FPS, seed: int = 7, max_threads: int | None = None
) -> None:
    """Render (Renderer `seed`) and encode `cfg` at `fps` into `path` (written under a temporary
    name, then renamed), with up to `max_threads` encoder frame threads (default: all cores).
    Keyframes are forced at the cuts of a cuts-only GOP."""
    tmp = path.with_name(f".part-{path.name}")
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only, no banner per clip
    renderer = Renderer(cfg, seed=seed)
    cuts = set(cfg.cut_frames())
    buf = np.empty((cfg.height * 3 // 2, cfg.width), dtype=np.uint8)
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream(ENCODERS[cfg.codec], rate=fps, options=video_options(cfg))
        assert isinstance(vs, av.VideoStream)
        vs.width, vs.height, vs.pix_fmt = cfg.width, cfg.height, "yuv420p"
        cc = vs.codec_context
        cc.gop_size = cfg.keyint()
        cc.thread_type = "FRAME"  # frame threads: no x264 slices in the bitstream
        cc.thread_count = min(max_threads or os.cpu_count() or 1, os.cpu_count() or 1)
        if cfg.codec == "hevc":
            cc.codec_tag = "hvc1"
        for i in range(cfg.n_frames):
            renderer.frame(i, buf)
            frame = av.VideoFrame.from_ndarray(buf, format="yuv420p")
            frame.pts = i
            if cfg.gop == "cuts" and i in cuts:
                frame.pict_type = av.video.frame.PictureType.I
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
    tmp.replace(path)


def build_corpus(configs: list[ClipConfig], corpus: Path) -> list[tuple[ClipConfig, Path]]:
    """Encode the clips not yet in `corpus`; print progress."""
    corpus.mkdir(parents=True, exist_ok=True)
    clips = [(c, corpus / c.name) for c in configs]
    todo = [(c, p) for c, p in clips if not p.is_file()]
    print(f"corpus {corpus}: {len(clips)} clips, {len(todo)} to encode", flush=True)
    t_all = time.perf_counter()
    for k, (cfg, path) in enumerate(todo, 1):
        print(f"  [{k}/{len(todo)}] {cfg.name} ...", end=" ", flush=True)
        t0 = time.perf_counter()
        encode_clip(cfg, path)
        dt = time.perf_counter() - t0
        print(f"{dt:.1f} s, {path.stat().st_size / 1e6:.2f} MB", flush=True)
    if todo:
        print(f"  encoded in {time.perf_counter() - t_all:.1f} s", flush=True)
    return clips


# ---------------------------------------------------------------------------------------------
# Methods


@dataclass(frozen=True)
class Probe:
    """One untimed demux pass: timestamps (display order, seconds from the first pts)."""

    origin: float  # stream seconds of the earliest pts
    time_base: Fraction
    pts: np.ndarray  # sorted
    key_pts: np.ndarray  # sorted
    size_bytes: int
    codec: str

    def seconds(self, frame: Any) -> float | None:
        """A decoded frame's time on the same scale, None without a pts."""
        return None if frame.pts is None else float(frame.pts * self.time_base) - self.origin

    @property
    def keyframes(self) -> int:
        return len(self.key_pts)

    def frames_from_key(self, t: float) -> int:
        """Frames from the last keyframe at or before `t` up to `t` (display order)."""
        k = self.key_pts[max(int(np.searchsorted(self.key_pts, t + 1e-6, "right")) - 1, 0)]
        return int(np.searchsorted(self.pts, t + 1e-6, "right") - np.searchsorted(self.pts, k))


def probe_clip(path: Path) -> Probe:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        tb = s.time_base or Fraction(1, 90000)
        pts, keys = [], []
        for pkt in c.demux(s):
            if pkt.size == 0 or pkt.pts is None:
                continue
            pts.append(float(pkt.pts * tb))
            keys.append(bool(pkt.is_keyframe))
        codec = str(s.codec_context.name)
    arr = np.asarray(pts)
    origin = float(arr.min())
    order = np.argsort(arr)
    return Probe(
        origin=origin,
        time_base=tb,
        pts=arr[order] - origin,
        key_pts=np.sort(arr[np.asarray(keys, dtype=bool)]) - origin,
        size_bytes=path.stat().st_size,
        codec=codec,
    )


@dataclass
class Sample:
    frames: np.ndarray  # (8, 160, 96, 3) uint8 RGB
    timestamps: list[float]  # seconds from the first pts
    frames_decoded: int | None  # None: the method does not say
    frames_min: int | None = None  # a lower bound when frames_decoded is unknown


Method = Callable[[Path, Probe, list[float]], Sample]


def _ours(policy: Policy, threads: int = 2, threading: Threading = "gops") -> Method:
    def run(path: Path, probe: Probe, targets: list[float]) -> Sample:
        spec = SamplingSpec(
            frames=FRAMES,
            height=OUT_H,
            width=OUT_W,
            policy=policy,
            threads=threads,
            threading=threading,
        )
        clip = sample_frames(path, spec)
        return Sample(clip.frames, list(clip.timestamps), clip.frames_decoded)

    return run


def _rgb(frame: Any) -> np.ndarray:
    return frame.reformat(
        width=OUT_W, height=OUT_H, format="rgb24", interpolation="AREA"
    ).to_ndarray()


def pyav_seek(path: Path, probe: Probe, targets: list[float]) -> Sample:
    """Per target: seek back to a keyframe, decode until the first frame at or after it."""
    out, stamps, decoded = [], [], 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        for t in targets:
            c.seek(math.floor((t + probe.origin) / probe.time_base), stream=s, backward=True)
            for fr in c.decode(s):
                decoded += 1
                ft = probe.seconds(fr)
                if ft is not None and ft >= t - 1e-6:
                    out.append(_rgb(fr))
                    stamps.append(ft)
                    break
    return Sample(np.stack(out), stamps, decoded)


def pyav_all(path: Path, probe: Probe, targets: list[float]) -> Sample:
    """Decode every frame (frame threads), keep the one nearest each target."""
    best: list[tuple[float, float, Any]] = [(math.inf, 0.0, None)] * len(targets)
    decoded = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for fr in c.decode(s):
            decoded += 1
            ft = probe.seconds(fr)
            if ft is None:
                continue
            for j, t in enumerate(targets):
                if abs(ft - t) < best[j][0]:
                    best[j] = (abs(ft - t), ft, fr)
        out = [_rgb(fr) for _, _, fr in best]
    return Sample(np.stack(out), [ft for _, ft, _ in best], decoded)


def opencv(path: Path, probe: Probe, targets: list[float]) -> Sample:
    """`CAP_PROP_POS_FRAMES` seek + read per target; timestamps as OpenCV reports them."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise RuntimeError("cv2.VideoCapture could not open the clip")
    try:
        fps = cap.get(cv2.CAP_PROP_FPS)
        last = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) - 1
        out, stamps = [], []
        for t in targets:
            idx = min(max(round(t * fps), 0), last)
            cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
            ok, img = cap.read()
            if not ok:
                raise RuntimeError(f"cap.read() failed after seeking to frame {idx}")
            stamps.append(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
            small = cv2.resize(img, (OUT_W, OUT_H), interpolation=cv2.INTER_AREA)
            out.append(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    lower = sum(probe.frames_from_key(t) for t in stamps)
    return Sample(np.stack(out), stamps, None, lower)


def torchcodec(path: Path, probe: Probe, targets: list[float]) -> Sample:
    """torchcodec's CPU `VideoDecoder.get_frames_played_at`, resized with area interpolation."""
    import torch
    from torchcodec.decoders import VideoDecoder

    batch = VideoDecoder(str(path)).get_frames_played_at(
        seconds=[t + probe.origin for t in targets]
    )
    small = torch.nn.functional.interpolate(batch.data.float(), size=(OUT_H, OUT_W), mode="area")
    frames = small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    stamps = [float(p) - probe.origin for p in batch.pts_seconds]
    return Sample(frames, stamps, None)


# Keyframe packets of each clip, read once (in the untimed warm-up) by `keyframe_floor`.
_KEY_PACKETS: dict[Path, tuple[str, bytes | None, list[tuple[float, bytes]]]] = {}


def _key_packets(path: Path, probe: Probe) -> tuple[str, bytes | None, list[tuple[float, bytes]]]:
    if path not in _KEY_PACKETS:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            keys = [
                (float(p.pts * probe.time_base) - probe.origin, bytes(p))
                for p in c.demux(s)
                if p.is_keyframe and p.size and p.pts is not None
            ]
            _KEY_PACKETS[path] = (s.codec_context.name, s.codec_context.extradata, keys)
    return _KEY_PACKETS[path]


def keyframe_floor(path: Path, probe: Probe, targets: list[float]) -> Sample:
    """The floor of any sampler that returns decoded frames: only the distinct keyframes
    nearest the targets, decoded by 2 single-threaded decoders at once from packets already
    in memory (no container, no index: read in the warm-up) and resized in swscale."""
    codec, extradata, keys = _key_packets(path, probe)
    times = np.array([t for t, _ in keys])
    nearest = [int(np.argmin(np.abs(times - t))) for t in targets]
    wanted = sorted(set(nearest))

    def decode(part: list[int]) -> dict[int, np.ndarray]:
        cc = av.CodecContext.create(codec, "r")
        if extradata:
            cc.extradata = extradata
        cc.thread_type, cc.thread_count = "NONE", 1
        out = {}
        for k in part:
            frames = [*cc.decode(av.Packet(keys[k][1])), *cc.decode(None)]
            cc.flush_buffers()
            out[k] = _rgb(frames[0])
        return out

    with ThreadPoolExecutor(2) as pool:
        parts = pool.map(decode, [wanted[0::2], wanted[1::2]])
        got = {k: v for part in parts for k, v in part.items()}
    return Sample(
        np.stack([got[k] for k in nearest]), [float(times[k]) for k in nearest], len(wanted)
    )


METHODS: dict[str, tuple[Method, str]] = {
    "ours-fast": (_ours("fast"), "sample_frames(policy='fast')"),
    "ours-exact": (_ours("exact"), "sample_frames(policy='exact')"),
    "opencv": (opencv, "cv2.VideoCapture, CAP_PROP_POS_FRAMES seek + read, INTER_AREA resize"),
    "pyav-seek": (
        pyav_seek,
        "PyAV seek(backward) + decode to the first frame >= target, PyAV default threads",
    ),
    "pyav-all": (pyav_all, "PyAV decode every frame (thread_type AUTO), keep the nearest"),
    "torchcodec": (torchcodec, "torchcodec VideoDecoder.get_frames_played_at (CPU)"),
    "key-floor": (
        keyframe_floor,
        "decode only the nearest keyframes, packets in memory, 2 threads",
    ),
}
# `fast` with other threading (not in the default run; `--threads-sweep` or --methods): GOPs
# shared by N single-threaded decoders against one decoder with FFmpeg's frame+slice threads.
THREAD_COUNTS = (1, 2, 4, 8, 16)
THREAD_METHODS: dict[str, tuple[Method, str]] = {
    **{
        f"gops-{n}": (_ours("fast", n, "gops"), f"fast, GOPs shared by {n} 1-thread decoders")
        for n in THREAD_COUNTS
    },
    **{
        f"ffmpeg-{n}": (_ours("fast", n, "ffmpeg"), f"fast, one decoder, FFmpeg {n} threads")
        for n in THREAD_COUNTS[1:]
    },
}
ALL_METHODS = {**METHODS, **THREAD_METHODS}
NEEDS = {"opencv": "cv2", "torchcodec": "torchcodec.decoders"}


def _reason(exc: BaseException) -> str:
    """The exception and its causes on one line."""
    parts: list[str] = []
    cur: BaseException | None = exc
    while cur is not None and len(parts) < 4:
        parts.append(
            f"{type(cur).__name__}: {str(cur).strip().splitlines()[0] if str(cur) else ''}"
        )
        cur = cur.__cause__ or cur.__context__
    return " <- ".join(parts)


def available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Methods whose imports work, and why the others were skipped."""
    ok, skipped = [], {}
    for name in names:
        module = NEEDS.get(name)
        if module is not None:
            try:
                importlib.import_module(module)
            except Exception as exc:
                skipped[name] = _reason(exc)
                continue
        ok.append(name)
    return ok, skipped


# ---------------------------------------------------------------------------------------------
# Measurement and report


@dataclass
class Stats:
    ms: list[float] = field(default_factory=list)
    frames_decoded: list[int] = field(default_factory=list)
    frames_min: list[int] = field(default_factory=list)
    deviation: list[float] = field(default_factory=list)
    error: str | None = None

    def median(self) -> float:
        return float(np.median(self.ms))

    def p90(self) -> float:
        return float(np.percentile(self.ms, 90))

    def summary(self, ref: float | None) -> dict[str, Any]:
        if self.error is not None or not self.ms:
            return {"error": self.error}
        fd = int(np.median(self.frames_decoded)) if self.frames_decoded else None
        fmin = int(np.median(self.frames_min)) if self.frames_min else None
        return {
            "ms": self.ms,
            "median_ms": self.median(),
            "p90_ms": self.p90(),
            "ratio": self.median() / ref if ref else None,
            "frames_decoded": fd,
            "frames_decoded_min": fmin,
            "mean_deviation_s": float(np.mean(self.deviation)),
        }


def _check(s: Sample, n: int) -> None:
    if s.frames.shape != (n, OUT_H, OUT_W, 3) or len(s.timestamps) != n:
        raise RuntimeError(f"returned frames {s.frames.shape}, {len(s.timestamps)} timestamps")


def bench_clip(path: Path, methods: list[str], repeat: int) -> tuple[Probe, list[float], dict]:
    """One untimed warm-up per method, then `repeat` rounds of every method, order rotated."""
    probe = probe_clip(path)
    spec = SamplingSpec(frames=FRAMES, height=OUT_H, width=OUT_W, policy="exact")
    targets = list(sample_frames(path, spec).targets)
    stats = {m: Stats() for m in methods}
    for m in methods:
        try:
            _check(ALL_METHODS[m][0](path, probe, targets), len(targets))
        except Exception as exc:
            stats[m].error = _reason(exc)
    live = [m for m in methods if stats[m].error is None]
    for r in range(repeat):
        k = r % max(len(live), 1)
        for m in live[k:] + live[:k]:
            st = stats[m]
            if st.error is not None:
                continue
            t0 = time.perf_counter()
            try:
                s = ALL_METHODS[m][0](path, probe, targets)
            except Exception as exc:
                st.error = _reason(exc)
                continue
            st.ms.append((time.perf_counter() - t0) * 1000)
            dev = np.abs(np.asarray(s.timestamps) - np.asarray(targets))
            st.deviation.append(float(dev.mean()))
            if s.frames_decoded is not None:
                st.frames_decoded.append(s.frames_decoded)
            if s.frames_min is not None:
                st.frames_min.append(s.frames_min)
    return probe, targets, stats


def _frames_cell(d: dict[str, Any]) -> str:
    if d.get("frames_decoded") is not None:
        return str(d["frames_decoded"])
    if d.get("frames_decoded_min") is not None:
        return f">={d['frames_decoded_min']}"
    return "n/a"


def print_clip(cfg: ClipConfig, probe: Probe, rows: dict[str, dict[str, Any]]) -> None:
    print(
        f"\n{cfg.name}: {cfg.width}x{cfg.height} (decoder {probe.codec}), {len(probe.pts)} frames, "
        f"{probe.keyframes} keyframes, {probe.size_bytes / 1e6:.2f} MB"
    )
    print(
        f"  {'method':<11} {'median ms':>10} {'p90 ms':>9} {'x ' + REFERENCE:>12} "
        f"{'frames':>8} {'mean dev s':>11}"
    )
    for m, d in rows.items():
        if d.get("error"):
            print(f"  {m:<11} failed: {d['error']}")
            continue
        ratio = f"{d['ratio']:.2f}" if d["ratio"] is not None else "n/a"
        print(
            f"  {m:<11} {d['median_ms']:>10.1f} {d['p90_ms']:>9.1f} {ratio:>12} "
            f"{_frames_cell(d):>8} {d['mean_deviation_s']:>11.4f}"
        )


def _geomean(xs: list[float]) -> float:
    return float(np.exp(np.mean(np.log(xs))))


def group_summaries(clips: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Per (size, gop, codec): geometric means over the group's clips (its durations)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in clips:
        groups.setdefault(c["group"], []).append(c)
    out = []
    for g, members in groups.items():
        row: dict[str, Any] = {"group": g, "clips": [c["name"] for c in members], "methods": {}}
        for m in methods:
            ds = [c["methods"].get(m, {}) for c in members]
            if not all(d.get("median_ms") for d in ds):
                row["methods"][m] = None
                continue
            ratios = [d["ratio"] for d in ds if d.get("ratio")]
            row["methods"][m] = {
                "median_ms": _geomean([d["median_ms"] for d in ds]),
                "ratio": _geomean(ratios) if len(ratios) == len(ds) else None,
                "mean_deviation_s": float(np.mean([d["mean_deviation_s"] for d in ds])),
            }
        out.append(row)
    return out


def print_groups(groups: list[dict[str, Any]]) -> None:
    print(
        "\nsummary per (size, codec, gop): geometric mean over durations of median ms, "
        f"x {REFERENCE}"
    )
    for row in groups:
        cells = []
        for m, d in row["methods"].items():
            if d is None:
                cells.append(f"{m} n/a")
            else:
                ratio = f" x{d['ratio']:.2f}" if d["ratio"] is not None else ""
                cells.append(f"{m} {d['median_ms']:.1f} ms{ratio}")
        print(f"  {row['group']:<26} ({len(row['clips'])}): " + " | ".join(cells))


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "av": av.__version__,
        "ffmpeg_libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
    }
    for mod in ("cv2", "torchcodec"):
        try:
            env[mod] = importlib.import_module(mod).__version__
        except Exception:
            env[mod] = None
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=OUT_DIR / "corpus")
    ap.add_argument("--json", type=Path, default=OUT_DIR / "report.json")
    ap.add_argument("--full", action="store_true", help="the whole encoding product")
    ap.add_argument("--quick", action="store_true", help="base clip only, 2 repeats")
    ap.add_argument("--repeat", type=int, help="timed repetitions per method (default 5)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    ap.add_argument("--only", help="comma-separated substrings; keep clips whose name has one")
    ap.add_argument(
        "--threads-sweep",
        action="store_true",
        help="compare GOP-parallel decoders with FFmpeg threading at 1..16 threads (up to the "
        "CPU count) instead of the baselines",
    )
    args = ap.parse_args()

    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.threads_sweep:
        cpus = os.cpu_count() or 1
        wanted = [REFERENCE] + [m for m in THREAD_METHODS if int(m.split("-")[1]) <= cpus]
    unknown = [m for m in wanted if m not in ALL_METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {list(ALL_METHODS)}")
    repeat = args.repeat or (2 if args.quick else 5)
    configs = [BASE] if args.quick else full_corpus() if args.full else default_corpus()
    if args.only:
        keys = [k for k in args.only.split(",") if k]
        configs = [c for c in configs if any(k in c.name for k in keys)]
    if not configs:
        ap.error("no clip matches --only")

    env = environment()
    print(
        f"python {env['python']}, {env['cpus']} CPUs, PyAV {env['av']} "
        f"(libavcodec {env['ffmpeg_libavcodec']}), OpenCV {env['cv2']}, "
        f"torchcodec {env['torchcodec']}"
    )
    methods, skipped = available(wanted)
    for m, why in skipped.items():
        print(f"skipped {m}: {why}")
    clips = build_corpus(configs, args.corpus)
    print(
        f"\n{len(clips)} clips x {len(methods)} methods x {repeat} repeats (+1 warm-up), "
        f"{FRAMES} frames at {OUT_W}x{OUT_H}, interleaved"
    )
    for m in methods:
        print(f"  {m:<11} {ALL_METHODS[m][1]}")
    print(
        "frames: frames the method decoded; >=N where it does not say (a lower bound: frames "
        "from the preceding keyframe to each returned frame)"
    )

    report: list[dict[str, Any]] = []
    for cfg, path in clips:
        probe, targets, stats = bench_clip(path, methods, repeat)
        ref_stats = stats.get(REFERENCE)
        ref = ref_stats.median() if ref_stats and ref_stats.ms and not ref_stats.error else None
        rows = {m: stats[m].summary(ref) for m in methods}
        print_clip(cfg, probe, rows)
        report.append(
            {
                "name": cfg.name,
                "group": cfg.group,
                "config": asdict(cfg),
                "container": cfg.container,
                "size_bytes": probe.size_bytes,
                "frames": len(probe.pts),
                "keyframes": probe.keyframes,
                "targets": targets,
                "methods": rows,
            }
        )
        sys.stdout.flush()
    groups = group_summaries(report, methods)
    print_groups(groups)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "environment": env,
        "settings": {
            "repeat": repeat,
            "frames": FRAMES,
            "height": OUT_H,
            "width": OUT_W,
            "reference": REFERENCE,
            "corpus": str(args.corpus),
        },
        "methods": {m: ALL_METHODS[m][1] for m in methods},
        "skipped": skipped,
        "clips": report,
        "groups": groups,
    }
    args.json.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
