"""Frame timestamps shared by the renderer (what to draw) and the encoder (pts)."""

from __future__ import annotations

import numpy as np

from vidtag.synth.spec import ClipSpec, Encoding

VFR_MS = 1000  # VFR clips use a 1/1000 s time base


def frame_times(enc: Encoding) -> np.ndarray:
    """Presentation time (s) of every frame. VFR: gaps drawn uniformly in 0.5-1.5 nominal frame
    intervals, rescaled to the same total duration and rounded to whole milliseconds."""
    n = enc.n_frames
    if not enc.vfr:
        return np.arange(n, dtype=np.float64) / enc.fps
    gaps = np.random.default_rng(enc.timing_seed).uniform(0.5, 1.5, n)
    gaps *= enc.duration / gaps.sum()
    t = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    return np.round(t * VFR_MS) / VFR_MS


def cut_frame(spec: ClipSpec, times: np.ndarray) -> int | None:
    """Index of the first frame of the second scene, or None without a cut."""
    if spec.camera.kind != "cut":
        return None
    return int(np.searchsorted(times, spec.camera.cut_time, side="left"))
