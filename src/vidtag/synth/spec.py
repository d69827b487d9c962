"""Plain-data description of one STB-1 clip: everything random is drawn into these records first.

All lengths are pixels of the display frame (already multiplied by the split's scale), all times
are seconds. A `ClipSpec` plus the renderer is enough to reproduce a clip exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RGB = tuple[int, int, int]

SPLIT_CODES: dict[str, int] = {"train": 0, "test": 1}


@dataclass(frozen=True)
class Scene:
    """A static background. `colors` holds 1 (plain) or 2 colours (the other kinds).

    `period` is the stripe width, checker size, grid spacing or noise cell size; `angle` is in
    radians; `offset` shifts the pattern's phase; `seed` drives the noise texture.
    """

    kind: str
    colors: tuple[RGB, ...]
    angle: float = 0.0
    period: float = 0.0
    line_width: float = 0.0
    offset: tuple[float, float] = (0.0, 0.0)
    seed: int = 0


@dataclass(frozen=True)
class Instance:
    """One drawn object. `size` is the diameter of its circumscribed circle at the start.

    Motion parameters: `end` is the final centre (move_*), `turns` signed full turns (rotate),
    `zoom` the end/start size ratio (zoom_in > 1 > zoom_out), `toggles` the times at which a
    blinking instance switches between visible and hidden (visible at t=0).
    `shape_param` is the ring's inner/outer radius ratio or the cross's arm width / size.
    """

    shape: str
    color: RGB
    dot_color: RGB
    size: float
    start: tuple[float, float]
    angle: float
    motion: str | None = None
    end: tuple[float, float] | None = None
    turns: float = 0.0
    zoom: float = 1.0
    toggles: tuple[float, ...] = ()
    shape_param: float = 0.0
    dot_angle: float = 0.0


@dataclass(frozen=True)
class Camera:
    """`kind` is None, "shake" or "cut". Shake offsets are drawn per hold of `shake_hold` frames."""

    kind: str | None = None
    shake_amp: tuple[float, float] = (0.0, 0.0)
    shake_hold: int = 1
    shake_seed: int = 0
    cut_time: float = 0.0


@dataclass(frozen=True)
class Distractors:
    """Untagged nuisances. `text` is None, "caption" or "timestamp"; `drift` is the per-channel
    gain change reached at the end of the clip (linear in time); `noise_sigma` and `blur_radius`
    are 0 when off."""

    text: str | None = None
    caption: str = ""
    text_xy: tuple[float, float] = (0.0, 0.0)
    font_px: int = 12
    clock_start: int = 0
    drift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    noise_sigma: float = 0.0
    noise_seed: int = 0
    blur_radius: float = 0.0


@dataclass(frozen=True)
class Encoding:
    """Container-level choices. `width`/`height` are the display size (after rotation)."""

    width: int
    height: int
    fps: int
    vfr: bool
    duration: float
    codec: str
    container: str
    gop: str
    crf: int
    rotation: int
    audio: bool
    timing_seed: int = 0
    audio_seed: int = 0

    @property
    def n_frames(self) -> int:
        return max(2, round(self.duration * self.fps))


@dataclass(frozen=True)
class ClipSpec:
    """One clip: content, nuisances, encoding and its tag set (names in TAGS order)."""

    split: str
    seed: int
    index: int
    scale: float
    encoding: Encoding
    scenes: tuple[Scene, ...]
    instances: tuple[Instance, ...]
    camera: Camera
    distractors: Distractors
    tags: tuple[str, ...] = field(default=())

    @property
    def filename(self) -> str:
        return f"stb1-{self.split}-{self.index:05d}.{self.encoding.container}"
