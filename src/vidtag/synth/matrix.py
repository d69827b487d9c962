"""The STB-1 encoding matrix (SYNTH_SPEC.md "Encoding"): size, duration, fps, codec, GOP, CRF,
audio, rotation. Every field is drawn, then overrides replace some, so forcing one property does
not reshuffle the others.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np

from vidtag.synth.spec import Encoding

T = TypeVar("T")

TEST_SIZES: list[tuple[tuple[int, int], float]] = [
    ((540, 960), 0.50),
    ((720, 1280), 0.15),
    ((480, 854), 0.12),
    ((1080, 1920), 0.07),
    ((1280, 720), 0.08),
    ((540, 962), 0.08),
]
TEST_FPS: list[tuple[int, float]] = [(24, 0.2), (25, 0.25), (30, 0.45), (60, 0.10)]
TRAIN_FPS: list[tuple[int, float]] = [(24, 0.25), (25, 0.3), (30, 0.45)]
CODECS: list[tuple[tuple[str, str], float]] = [
    (("h264", "mp4"), 0.55),
    (("hevc", "mp4"), 0.15),
    (("vp9", "webm"), 0.15),
    (("av1", "mkv"), 0.08),
    (("av1", "mp4"), 0.07),
]
DEFAULT_CONTAINER = {"h264": "mp4", "hevc": "mp4", "vp9": "webm", "av1": "mkv"}
ALLOWED_CONTAINERS = {"h264": ("mp4",), "hevc": ("mp4",), "vp9": ("webm",), "av1": ("mkv", "mp4")}
GOPS: list[tuple[str, float]] = [("1s", 0.25), ("4s", 0.40), ("8s", 0.15), ("cuts", 0.20)]
P_VFR, P_AUDIO, P_ROTATION = 0.10, 0.30, 0.15

ENCODING_KEYS = {
    "duration", "size", "fps", "vfr", "codec", "container", "gop", "crf", "rotation", "audio",
}  # fmt: skip


def pick(rng: np.random.Generator, table: list[tuple[T, float]]) -> T:
    """Weighted choice from (value, weight) pairs."""
    weights = np.array([w for _, w in table], dtype=np.float64)
    return table[int(rng.choice(len(table), p=weights / weights.sum()))][0]


def _even(v: float) -> int:
    return max(2, 2 * math.ceil(round(v, 6) / 2))


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Train sizes: both sides scaled and kept even (4:2:0 H.264/HEVC reject odd sides, so the
    odd-looking 540x962 becomes 270x482: like 962, not a multiple of 16)."""
    if scale == 1.0:
        return size
    return _even(size[0] * scale), _even(size[1] * scale)


def _draw_duration(rng: np.random.Generator, split: str) -> float:
    r = rng.random()
    long_d = float(rng.uniform(15.0, 30.0))
    if split == "train":
        return float(rng.uniform(8.0, 16.0))
    if r < 0.03:
        return 5.0
    if r < 0.06:
        return 60.0
    return long_d


def sample_encoding(
    rng: np.random.Generator, split: str, scale: float, overrides: dict[str, Any]
) -> Encoding:
    """Draw the encoding matrix (SYNTH_SPEC.md table), then apply overrides."""
    size = scaled_size(pick(rng, TEST_SIZES), scale)
    duration = _draw_duration(rng, split)
    fps = pick(rng, TEST_FPS if split == "test" else TRAIN_FPS)
    codec, container = pick(rng, CODECS)
    d: dict[str, Any] = {
        "size": size,
        "duration": duration,
        "fps": fps,
        "vfr": bool(rng.random() < P_VFR),
        "codec": codec,
        "container": container,
        "gop": pick(rng, GOPS),
        "crf": int(rng.integers(20, 33)),
        "rotation": 90 if rng.random() < P_ROTATION else 0,
        "audio": bool(rng.random() < P_AUDIO),
    }
    timing_seed, audio_seed = (int(v) for v in rng.integers(0, 2**31, 2))
    enc = {k: v for k, v in overrides.items() if k in ENCODING_KEYS}
    if "codec" in enc and "container" not in enc:
        enc["container"] = DEFAULT_CONTAINER[enc["codec"]]
    d.update(enc)
    if d["container"] not in ALLOWED_CONTAINERS[d["codec"]]:
        raise ValueError(f"{d['codec']} cannot go in {d['container']}")
    if d["rotation"] not in (0, 90) or d["gop"] not in ("1s", "4s", "8s", "cuts"):
        raise ValueError("rotation must be 0 or 90 and gop one of 1s, 4s, 8s, cuts")
    fps = int(d["fps"])
    n = max(2, round(float(d["duration"]) * fps))
    w, h = (int(v) for v in d["size"])
    return Encoding(
        width=w,
        height=h,
        fps=fps,
        vfr=bool(d["vfr"]),
        duration=n / fps,
        codec=str(d["codec"]),
        container=str(d["container"]),
        gop=str(d["gop"]),
        crf=int(d["crf"]),
        rotation=int(d["rotation"]),
        audio=bool(d["audio"]),
        timing_seed=timing_seed,
        audio_seed=audio_seed,
    )
