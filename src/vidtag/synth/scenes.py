"""Static backgrounds as uint8 RGB arrays, rendered once per scene.

`origin` is the position of the display frame's top-left pixel inside the returned canvas, so a
canvas larger than the frame (margins for camera shake) continues the same pattern.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from vidtag.synth.spec import Scene


def _coords(width: int, height: int, origin: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(width, dtype=np.float32)[None, :] - origin[0]
    y = np.arange(height, dtype=np.float32)[:, None] - origin[1]
    return x, y


def _mix(colors: tuple[tuple[int, int, int], ...], t: np.ndarray) -> np.ndarray:
    """Blend colour 0 -> colour 1 by t in [0, 1] (any shape) into an RGB uint8 array."""
    a = np.asarray(colors[0], dtype=np.float32)
    b = np.asarray(colors[1], dtype=np.float32)
    out = a + t[..., None].astype(np.float32) * (b - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _gradient(s: Scene, w: int, h: int, origin: tuple[int, int], frame: tuple[int, int]):
    x, y = _coords(w, h, origin)
    c, si = math.cos(s.angle), math.sin(s.angle)
    corners = [cx * c + cy * si for cx in (0, frame[0]) for cy in (0, frame[1])]
    lo, hi = min(corners), max(corners)
    t = np.clip((x * c + y * si - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return _mix(s.colors, t)


def _stripes(s: Scene, w: int, h: int, origin: tuple[int, int]) -> np.ndarray:
    x, y = _coords(w, h, origin)
    proj = x * math.cos(s.angle) + y * math.sin(s.angle) + s.offset[0]
    return _mix(s.colors, (np.floor(proj / s.period) % 2).astype(np.float32))


def _checker(s: Scene, w: int, h: int, origin: tuple[int, int]) -> np.ndarray:
    x, y = _coords(w, h, origin)
    cell = np.floor((x + s.offset[0]) / s.period) + np.floor((y + s.offset[1]) / s.period)
    return _mix(s.colors, (cell % 2).astype(np.float32))


def _noise(s: Scene, w: int, h: int, origin: tuple[int, int]) -> np.ndarray:
    """Random values on a coarse lattice of `period` px, bicubically upsampled: smooth blobs."""
    rng = np.random.default_rng(s.seed)
    cell = max(s.period, 2.0)
    gw, gh = math.ceil(w / cell) + 3, math.ceil(h / cell) + 3
    lattice = Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32), mode="F")
    big = lattice.resize((round(gw * cell), round(gh * cell)), Image.Resampling.BICUBIC)
    field = np.asarray(big)[round(cell) : round(cell) + h, round(cell) : round(cell) + w]
    lo, hi = float(field.min()), float(field.max())
    return _mix(s.colors, (field - lo) / max(hi - lo, 1e-6))


def line_coverage(n: int, start: float, spacing: float, width: float) -> np.ndarray:
    """Per-pixel ink (0..1) of lines every `spacing` px, `width` px wide, on n pixels.

    Line starts snap to whole pixels; a width below 1 px becomes one pixel whose opacity equals the
    width, and a fractional tail (1.5 px) becomes a full pixel plus a partial one, so a
    down-scaled grid keeps the same amount of ink per line.
    """
    cov = np.zeros(n, dtype=np.float32)
    first = start - spacing * math.ceil((start + width) / spacing)
    k0 = first
    while k0 < n:
        base = math.floor(k0)
        for j in range(math.ceil(width)):
            px = base + j
            if 0 <= px < n:
                cov[px] = max(cov[px], min(1.0, width - j))
        k0 += spacing
    return cov


def _grid(s: Scene, w: int, h: int, origin: tuple[int, int]) -> np.ndarray:
    cx = line_coverage(w, s.offset[0] + origin[0], s.period, s.line_width)
    cy = line_coverage(h, s.offset[1] + origin[1], s.period, s.line_width)
    alpha = 1.0 - (1.0 - cx[None, :]) * (1.0 - cy[:, None])
    return _mix(s.colors, alpha)


def render_scene(
    scene: Scene, width: int, height: int, origin: tuple[int, int], frame: tuple[int, int]
) -> np.ndarray:
    """Background canvas of `width` x `height`; `frame` is the display size (for the gradient)."""
    if scene.kind == "plain":
        out = np.empty((height, width, 3), dtype=np.uint8)
        out[:] = scene.colors[0]
        return out
    if scene.kind == "gradient":
        return _gradient(scene, width, height, origin, frame)
    if scene.kind == "stripes":
        return _stripes(scene, width, height, origin)
    if scene.kind == "checker":
        return _checker(scene, width, height, origin)
    if scene.kind == "noise":
        return _noise(scene, width, height, origin)
    if scene.kind == "grid":
        return _grid(scene, width, height, origin)
    raise ValueError(f"unknown scene kind {scene.kind!r}")
