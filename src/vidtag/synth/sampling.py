"""Draw a `ClipSpec` from a NumPy generator: encoding, tag structure, scenes, objects, camera,
distractors, in that fixed order, so a clip depends only on its generator's seed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vidtag.synth.matrix import ENCODING_KEYS, sample_encoding
from vidtag.synth.shapes import dot_angle_choices
from vidtag.synth.spec import (
    RGB,
    Camera,
    ClipSpec,
    Distractors,
    Encoding,
    Instance,
    Scene,
)
from vidtag.synth.structure import Structure, sample_structure
from vidtag.tags import TAG_INDEX

TRAIN_SCALE = 0.5

MIN_CONTRAST = 80.0
MAX_DRIFT = 0.15
# Drift scales object and background alike, so demand the margin that survives the worst drift.
OBJECT_CONTRAST = MIN_CONTRAST / (1.0 - MAX_DRIFT)
SCENE_CONTRAST = 60.0
WORDS = (
    "fun", "dance", "cat", "summer", "vlog", "food", "travel", "music", "diy", "love",
    "daily", "wow", "trend", "friends", "beach", "gym", "art", "style", "pets", "live",
)  # fmt: skip
OVERRIDE_KEYS = ENCODING_KEYS | {"tags", "scale", "distractors"}


def _color(rng: np.random.Generator) -> RGB:
    r, g, b = (int(v) for v in rng.integers(0, 256, 3))
    return r, g, b


def _dist(a: RGB | np.ndarray, b: RGB | np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def _second_color(rng: np.random.Generator, first: RGB) -> RGB:
    while True:
        c = _color(rng)
        if SCENE_CONTRAST <= _dist(first, c) <= 220.0:
            return c


def sample_scene(rng: np.random.Generator, kind: str, scale: float) -> Scene:
    """Colours and pattern parameters of one background; lengths in display px."""
    first = _color(rng)
    if kind == "plain":
        return Scene(kind, (first,))
    colors = (first, _second_color(rng, first))
    angle = float(rng.uniform(0.0, 2 * math.pi))
    seed = int(rng.integers(0, 2**31))
    if kind == "gradient":
        return Scene(kind, colors, angle=angle)
    if kind == "stripes":
        p = float(rng.uniform(8, 40)) * scale
        return Scene(
            kind, colors, angle=angle % math.pi, period=p, offset=(rng.uniform(0, 2 * p), 0)
        )
    if kind == "checker":
        p = float(rng.uniform(16, 64)) * scale
        off = (float(rng.uniform(0, 2 * p)), float(rng.uniform(0, 2 * p)))
        return Scene(kind, colors, period=p, offset=off)
    if kind == "noise":
        return Scene(kind, colors, period=float(rng.uniform(24, 96)) * scale, seed=seed)
    if kind == "grid":
        p = float(rng.uniform(24, 80)) * scale
        lw = float(rng.uniform(1, 3)) * scale
        off = (float(rng.uniform(0, p)), float(rng.uniform(0, p)))
        return Scene(kind, colors, period=p, line_width=lw, offset=off)
    raise ValueError(f"unknown scene kind {kind!r}")


def palette(scenes: tuple[Scene, ...]) -> np.ndarray:
    """Every background colour an object may sit on: both colours of each scene and the blends
    between them (gradients, noise, blurred or anti-aliased edges)."""
    pts = []
    t = np.linspace(0.0, 1.0, 11)[:, None]
    for s in scenes:
        a = np.asarray(s.colors[0], dtype=np.float64)
        b = np.asarray(s.colors[-1], dtype=np.float64)
        pts.append(a + t * (b - a))
    return np.concatenate(pts)


def _contrasting(rng: np.random.Generator, against: np.ndarray, min_dist: float) -> RGB | None:
    for _ in range(200):
        c = _color(rng)
        if np.min(np.linalg.norm(against - np.asarray(c, dtype=np.float64), axis=1)) >= min_dist:
            return c
    return None


def _blink_toggles(rng: np.random.Generator, duration: float) -> tuple[float, ...]:
    """Alternate visible/hidden periods of 1-3 s (shrunk for clips under 4 s), visible first,
    at least one hidden period, visible >= 40 % of the time."""
    lo, hi = (1.0, 3.0) if duration >= 4.0 else (duration / 4, 3 * duration / 4)
    while True:
        toggles, t, visible, shown = [], 0.0, True, 0.0
        while t < duration:
            seg = float(rng.uniform(lo, hi))
            if visible:
                shown += min(seg, duration - t)
            t += seg
            visible = not visible
            if t < duration:
                toggles.append(round(t, 4))
        if toggles and shown >= 0.4 * duration:
            return tuple(toggles)


def _place(
    rng: np.random.Generator, motion: str | None, radius: float, w: int, h: int
) -> tuple[tuple[float, float], tuple[float, float] | None] | None:
    """Start (and end) centre keeping a disc of `radius` inside the frame; None if impossible."""
    if 2 * radius >= min(w, h):
        return None
    x = float(rng.uniform(radius, w - radius))
    y = float(rng.uniform(radius, h - radius))
    if motion is None or not motion.startswith("move_"):
        return (x, y), None
    extent = w if motion in ("move_left", "move_right") else h
    frac = float(rng.uniform(0.35, 0.70))
    d = min(frac * extent, extent - 2 * radius)
    if d < 0.35 * extent:
        return None
    a = float(rng.uniform(radius, extent - radius - d))
    if motion == "move_right":
        return (a, y), (a + d, y)
    if motion == "move_left":
        return (a + d, y), (a, y)
    if motion == "move_down":
        return (x, a), (x, a + d)
    return (x, a + d), (x, a)  # move_up


def sample_instance(
    rng: np.random.Generator,
    shape: str,
    motion: str | None,
    bg: np.ndarray,
    enc: Encoding,
) -> Instance | None:
    """One object; None when its colour or placement cannot satisfy the constraints."""
    w, h = enc.width, enc.height
    size = float(rng.uniform(0.10, 0.25)) * min(w, h)
    zoom = float(rng.uniform(2.0, 3.0))
    start_size, ratio = size, 1.0
    if motion == "zoom_in":
        ratio = zoom
    elif motion == "zoom_out":
        start_size, ratio = size * zoom, 1.0 / zoom
    radius = 0.5 * max(start_size, start_size * ratio) + 1.0
    placed = _place(rng, motion, radius, w, h)
    color = _contrasting(rng, bg, OBJECT_CONTRAST)
    dot = _contrasting(rng, np.asarray([color or (0, 0, 0)], dtype=np.float64), 120.0)
    if placed is None or color is None or dot is None:
        return None
    param = float(rng.uniform(0.45, 0.65) if shape == "ring" else rng.uniform(0.25, 0.35))
    choices = dot_angle_choices(shape)
    dot_angle = float(rng.choice(choices)) if choices else float(rng.uniform(0, 2 * math.pi))
    turns = float(rng.uniform(1.0, 3.0)) * (1 if rng.random() < 0.5 else -1)
    toggles = _blink_toggles(rng, enc.duration) if motion == "blink" else ()
    return Instance(
        shape=shape,
        color=color,
        dot_color=dot,
        size=start_size,
        start=placed[0],
        angle=float(rng.uniform(0, 2 * math.pi)),
        motion=motion,
        end=placed[1],
        turns=turns if motion == "rotate" else 0.0,
        zoom=ratio,
        toggles=toggles,
        shape_param=param,
        dot_angle=dot_angle,
    )


def sample_camera(rng: np.random.Generator, kind: str | None, enc: Encoding) -> Camera:
    if kind == "shake":
        frac = float(rng.uniform(0.02, 0.04))
        return Camera(
            "shake",
            shake_amp=(frac * enc.width, frac * enc.height),
            shake_hold=int(rng.integers(1, 5)),
            shake_seed=int(rng.integers(0, 2**31)),
        )
    if kind == "cut":
        return Camera("cut", cut_time=float(rng.uniform(0.3, 0.7)) * enc.duration)
    return Camera()


def sample_distractors(rng: np.random.Generator, enc: Encoding, scale: float) -> Distractors:
    """Untagged nuisances: text overlay, colour drift, sensor noise, blur."""
    r_text, r_drift, r_noise, r_blur = rng.random(4)
    words = " ".join("#" + str(w) for w in rng.choice(WORDS, size=int(rng.integers(1, 4))))
    caption = f"@user{int(rng.integers(100, 9999))} {words}"
    font_px = max(8, round(float(rng.uniform(22, 40)) * scale))
    y = rng.uniform(0.03, 0.12) if rng.random() < 0.5 else rng.uniform(0.80, 0.90)
    xy = (float(rng.uniform(0.04, 0.25)) * enc.width, float(y) * enc.height)
    common = float(rng.uniform(-0.10, 0.10))
    drift = tuple(float(np.clip(common + rng.uniform(-0.05, 0.05), -MAX_DRIFT, MAX_DRIFT))
                  for _ in range(3))  # fmt: skip
    sigma = float(rng.uniform(2.0, 6.0))
    blur = float(rng.uniform(0.6, 1.6)) * scale
    seeds = int(rng.integers(0, 2**31))
    clock = int(rng.integers(0, 86400))
    text = None if r_text >= 0.6 else ("caption" if r_text < 0.3 else "timestamp")
    return Distractors(
        text=text,
        caption=caption,
        text_xy=xy,
        font_px=font_px,
        clock_start=clock,
        drift=drift if r_drift < 0.5 else (0.0, 0.0, 0.0),  # type: ignore[arg-type]
        noise_sigma=sigma if r_noise < 0.4 else 0.0,
        noise_seed=seeds,
        blur_radius=blur if r_blur < 0.3 else 0.0,
    )


def _sample_content(
    rng: np.random.Generator, st: Structure, enc: Encoding, scale: float
) -> tuple[tuple[Scene, ...], tuple[Instance, ...]]:
    """Scenes and instances for a structure, redrawing colours until every object contrasts."""
    while True:
        scenes = tuple(sample_scene(rng, k, scale) for k in st.scenes)
        bg = palette(scenes)
        instances = []
        for shape, motion in st.instances:
            for _ in range(20):
                inst = sample_instance(rng, shape, motion, bg, enc)
                if inst is not None:
                    instances.append(inst)
                    break
            else:
                break
        if len(instances) == len(st.instances):
            return scenes, tuple(instances)


def sample_clip(
    rng: np.random.Generator,
    split: str,
    seed: int,
    index: int,
    overrides: dict[str, Any] | None = None,
) -> ClipSpec:
    """The full spec of clip `index` of `split`."""
    ov = dict(overrides or {})
    unknown = set(ov) - OVERRIDE_KEYS
    if unknown:
        raise ValueError(f"unknown override(s): {sorted(unknown)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    scale = float(ov.get("scale", TRAIN_SCALE if split == "train" else 1.0))
    enc = sample_encoding(rng, split, scale, ov)
    forced = ov.get("tags")
    st = sample_structure(rng, set(forced) if forced is not None else None)
    scenes, instances = _sample_content(rng, st, enc, scale)
    camera = sample_camera(rng, st.camera, enc)
    distractors = sample_distractors(rng, enc, scale)
    if not ov.get("distractors", True):
        distractors = Distractors()
    return ClipSpec(
        split=split,
        seed=seed,
        index=index,
        scale=scale,
        encoding=enc,
        scenes=scenes,
        instances=instances,
        camera=camera,
        distractors=distractors,
        tags=tuple(sorted(st.tags, key=TAG_INDEX.__getitem__)),
    )
