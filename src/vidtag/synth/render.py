"""Frame rendering: static backgrounds built once, objects drawn per frame with Pillow.

Per frame: copy the (pre-blurred) background canvas, draw the instances, crop the shake window,
apply the colour-drift LUT, add one of a few precomputed noise frames, paste the cached text
overlay. The background canvas carries margins when the camera shakes, so the crop never leaves it.
"""

from __future__ import annotations

import math
from functools import cached_property, lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from vidtag.synth import shapes
from vidtag.synth.scenes import render_scene
from vidtag.synth.spec import RGB, ClipSpec, Instance
from vidtag.synth.timing import cut_frame, frame_times

N_NOISE_FRAMES = 4
NOISE_OFFSET = 128


def instance_state(inst: Instance, u: float, t: float) -> tuple[float, float, float, float, bool]:
    """(cx, cy, size, angle, visible) at clip fraction `u` (0..1) and time `t` (s)."""
    cx, cy = inst.start
    if inst.end is not None:
        cx += u * (inst.end[0] - inst.start[0])
        cy += u * (inst.end[1] - inst.start[1])
    size = inst.size * inst.zoom**u
    angle = inst.angle + 2 * math.pi * inst.turns * u
    visible = sum(1 for x in inst.toggles if x <= t) % 2 == 0
    return cx, cy, size, angle, visible


def draw_instance(
    draw: ImageDraw.ImageDraw,
    inst: Instance,
    state: tuple[float, float, float, float, bool],
    fill: RGB | int | None = None,
) -> None:
    """Draw one instance and its marker dot at the given state (canvas coordinates); `fill`
    paints both in one value instead of their colours (a mask)."""
    cx, cy, size, angle, visible = state
    if not visible:
        return
    color = inst.color if fill is None else fill
    r = size / 2
    box = (cx - r, cy - r, cx + r, cy + r)
    if inst.shape == "circle":
        draw.ellipse(box, fill=color)
    elif inst.shape == "ring":
        draw.ellipse(box, outline=color, width=max(1, round(r * (1 - inst.shape_param))))
    else:
        pts = shapes.polygon(inst.shape, inst.shape_param, size, angle) + np.array([cx, cy])
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=color)
    dx, dy = shapes.dot_offset(inst.shape, inst.shape_param, size, angle, inst.dot_angle)
    dr = max(0.75, shapes.DOT_FRACTION * size / 2)
    dot = inst.dot_color if fill is None else fill
    draw.ellipse((cx + dx - dr, cy + dy - dr, cx + dx + dr, cy + dy + dr), fill=dot)


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def text_patch(text: str, px: int) -> Image.Image:
    """White text with a dark outline on a transparent RGBA patch."""
    font = _font(px)
    stroke = max(1, px // 12)
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox(
        (0, 0), text, font=font, stroke_width=stroke
    )
    patch = Image.new("RGBA", (int(right - left) + 2, int(bottom - top) + 2), (0, 0, 0, 0))
    ImageDraw.Draw(patch).text(
        (1 - left, 1 - top), text, font=font, fill=(255, 255, 255, 255),
        stroke_width=stroke, stroke_fill=(20, 20, 20, 255),
    )  # fmt: skip
    return patch


class Renderer:
    """Renders the display-orientation frames of one clip; `frame(i)` is cheap after __init__."""

    def __init__(self, spec: ClipSpec) -> None:
        self.spec = spec
        enc = spec.encoding
        self.size = (enc.width, enc.height)
        self.times = frame_times(enc)
        self.cut = cut_frame(spec, self.times)
        ax, ay = spec.camera.shake_amp
        self.margin = (
            (math.ceil(ax) + 1, math.ceil(ay) + 1) if spec.camera.kind == "shake" else (0, 0)
        )
        self.shake = self._shake_offsets()
        self._patches: dict[str, Image.Image] = {}

    @cached_property
    def backgrounds(self) -> list[Image.Image]:
        """Built on first use: object masks need none of the pixels."""
        return [self._background(i) for i in range(len(self.spec.scenes))]

    @cached_property
    def noise(self) -> list[Image.Image]:
        return self._noise_frames()

    def __len__(self) -> int:
        return len(self.times)

    def _background(self, k: int) -> Image.Image:
        w, h = self.size
        mx, my = self.margin
        arr = render_scene(self.spec.scenes[k], w + 2 * mx, h + 2 * my, (mx, my), (w, h))
        img = Image.fromarray(arr)
        radius = self.spec.distractors.blur_radius
        return img.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else img

    def _shake_offsets(self) -> np.ndarray:
        n = len(self.times)
        if self.spec.camera.kind != "shake":
            return np.zeros((n, 2), dtype=np.int64)
        hold = self.spec.camera.shake_hold
        rng = np.random.default_rng(self.spec.camera.shake_seed)
        amp = np.asarray(self.spec.camera.shake_amp)
        blocks = rng.uniform(-1.0, 1.0, (math.ceil(n / hold), 2)) * amp
        return np.repeat(np.rint(blocks).astype(np.int64), hold, axis=0)[:n]

    def _noise_frames(self) -> list[Image.Image]:
        d = self.spec.distractors
        if d.noise_sigma <= 0:
            return []
        rng = np.random.default_rng(d.noise_seed)
        w, h = self.size
        frames = []
        for _ in range(N_NOISE_FRAMES):
            arr = rng.normal(NOISE_OFFSET, d.noise_sigma, (h, w, 3))
            frames.append(Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)))
        return frames

    def _text(self, t: float) -> str | None:
        d = self.spec.distractors
        if d.text == "caption":
            return d.caption
        if d.text == "timestamp":
            s = (d.clock_start + int(t)) % 86400
            return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
        return None

    def _drift_lut(self, u: float) -> list[int]:
        ramp = np.arange(256, dtype=np.float64)
        lut = [np.clip(np.rint(ramp * (1 + g * u)), 0, 255) for g in self.spec.distractors.drift]
        return np.concatenate(lut).astype(np.int64).tolist()

    def frame_at(self, t: float) -> int:
        """Index of the frame shown at `t` seconds (the last one that starts at or before it)."""
        return int(
            np.clip(np.searchsorted(self.times, t + 1e-6, side="right") - 1, 0, len(self) - 1)
        )

    def object_masks(self, i: int, kinds: tuple[str, ...], out: tuple[int, int]) -> np.ndarray:
        """(len(kinds), h, w) float32: the fraction of each cell of an `out` = (w, h) grid over
        frame `i` that instances of each kind cover (dots included, hidden ones not)."""
        w, h = self.size
        mx, my = self.margin
        t = float(self.times[i])
        u = t / self.spec.encoding.duration
        dx, dy = (int(v) for v in self.shake[i])
        maps = np.zeros((len(kinds), out[1], out[0]), dtype=np.float32)
        for k, kind in enumerate(kinds):
            found = [inst for inst in self.spec.instances if inst.shape == kind]
            if not found:
                continue
            canvas = Image.new("L", (w + 2 * mx, h + 2 * my), 0)
            draw = ImageDraw.Draw(canvas)
            for inst in found:
                cx, cy, size, angle, visible = instance_state(inst, u, t)
                draw_instance(draw, inst, (cx + mx, cy + my, size, angle, visible), fill=255)
            crop = canvas.crop((mx + dx, my + dy, mx + dx + w, my + dy + h))
            small = crop.resize(out, Image.Resampling.BOX)  # area average, as the decoder's
            maps[k] = np.asarray(small, dtype=np.float32) / 255.0
        return maps

    def frame(self, i: int) -> Image.Image:
        """Frame `i` as an RGB image of the display size."""
        t = float(self.times[i])
        u = t / self.spec.encoding.duration
        bg = self.backgrounds[1 if self.cut is not None and i >= self.cut else 0]
        img = bg.copy()
        draw = ImageDraw.Draw(img)
        mx, my = self.margin
        for inst in self.spec.instances:
            cx, cy, size, angle, visible = instance_state(inst, u, t)
            draw_instance(draw, inst, (cx + mx, cy + my, size, angle, visible))
        if self.margin != (0, 0):
            dx, dy = (int(v) for v in self.shake[i])
            w, h = self.size
            img = img.crop((mx + dx, my + dy, mx + dx + w, my + dy + h))
        if any(self.spec.distractors.drift):
            img = img.point(self._drift_lut(u))
        if self.noise:
            img = ImageChops.add(img, self.noise[i % len(self.noise)], 1.0, -NOISE_OFFSET)
        text = self._text(t)
        if text is not None:
            patch = self._patches.get(text)
            if patch is None:
                patch = self._patches[text] = text_patch(text, self.spec.distractors.font_px)
            x, y = self.spec.distractors.text_xy
            img.paste(patch, (int(x), int(y)), patch)
        return img
