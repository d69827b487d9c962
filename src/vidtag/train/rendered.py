"""Fresh STB-1 training clips rendered straight to the network's input, never encoded.

Encoding and decoding cost most of a synthesised clip (x264/SVT and the RGB->YUV conversion:
~1.5 core-s a clip here), so the encoded training split stays a few thousand clips and a network
memorises them. A rendered clip costs ~0.1 core-s: the renderer draws the display-size frames at
the sampled times, and each is area-resized to the input size, as the serving decoder's swscale
does. Each clip is used once (an endless stream of spec indices), so nothing can be memorised;
compression artefacts are what it lacks, so training mixes it with the encoded clips.

Frame times imitate what the `fast` sampler returns: the centre of each of T equal segments,
moved by up to 0.4 of a segment (where the keyframes happen to be). With a mask grid, each clip
also comes with its object masks: per frame and object kind, the fraction of each grid cell the
instances cover (uint8, 255 = covered), what `--aux-masks` trains a dense object head on.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from typing import Any

import numpy as np
from PIL import Image

from vidtag.synth.generate import clip_spec
from vidtag.synth.render import Renderer
from vidtag.train.masks import render_masks

JITTER = 0.4  # of a segment: how far a returned frame may sit from its segment's centre
Job = tuple[int, int, int, int, int, tuple[int, int] | None]
Rendered = tuple[np.ndarray, tuple[str, ...], np.ndarray | None]


def sample_times(duration: float, frames: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted frame times (s): segment centres moved by up to JITTER of a segment."""
    seg = duration / frames
    t = (np.arange(frames) + 0.5 + rng.uniform(-JITTER, JITTER, frames)) * seg
    return np.sort(np.clip(t, 0.0, duration))


def render_clip(job: Job) -> Rendered:
    """Clip `index` of the STB-1 train split with seed `seed`: (T, H, W, 3) uint8 frames at the
    input size, its tags, and with a `grid` (w, h) its (T, len(OBJECTS), h, w) uint8 masks."""
    seed, index, frames, height, width, grid = job
    spec = clip_spec("train", seed, index, None)
    rng = np.random.default_rng([seed, index, 7])
    times = sample_times(spec.encoding.duration, frames, rng)
    renderer = Renderer(spec)
    masks = render_masks(renderer, times, grid) if grid is not None else None
    return render_frames(renderer, times, height, width), spec.tags, masks


def render_frames(renderer: Renderer, times: np.ndarray, height: int, width: int) -> np.ndarray:
    """(len(times), H, W, 3) uint8: the frames shown at `times`, area-resized."""
    out = np.empty((len(times), height, width, 3), dtype=np.uint8)
    for k, t in enumerate(times):
        img = renderer.frame(renderer.frame_at(float(t)))
        out[k] = np.asarray(img.resize((width, height), Image.Resampling.BOX))
    return out


class RenderedStream:
    """Clips `start`, `start + step`, ... of the train split with `seed`, rendered ahead of
    use by `workers` spawned processes (at most `ahead` clips waiting); `take(n)` returns the
    next n in order. `workers=0` renders in the calling process. `grid` (w, h): masks too."""

    def __init__(
        self,
        seed: int,
        frames: int,
        height: int,
        width: int,
        workers: int,
        start: int = 0,
        step: int = 1,
        ahead: int = 64,
        grid: tuple[int, int] | None = None,
    ) -> None:
        self._job = (seed, frames, height, width)
        self._grid = grid
        self._next, self._step = start, step
        self._ahead = max(1, ahead)
        self._pool: Any = mp.get_context("spawn").Pool(workers) if workers > 0 else None
        self._pending: deque[Any] = deque()
        self.rendered = 0

    def _submit(self) -> None:
        self._pending.append(self._pool.apply_async(render_clip, (self._next_job(),)))

    def _next_job(self) -> Job:
        seed, frames, height, width = self._job
        job = (seed, self._next, frames, height, width, self._grid)
        self._next += self._step
        return job

    def take(self, n: int) -> tuple[np.ndarray, list[tuple[str, ...]], np.ndarray | None]:
        """(n, T, H, W, 3) uint8 frames, their tag tuples, and (n, T, K, h, w) uint8 masks
        (None without a grid)."""
        got: list[Rendered] = []
        for _ in range(n):
            if self._pool is None:
                got.append(render_clip(self._next_job()))
            else:
                while len(self._pending) < self._ahead:
                    self._submit()
                got.append(self._pending.popleft().get())
        self.rendered += n
        masks = [m for _, _, m in got if m is not None]
        return (
            np.stack([f for f, _, _ in got]),
            [t for _, t, _ in got],
            np.stack(masks) if masks else None,
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> RenderedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
