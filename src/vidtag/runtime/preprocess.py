"""The one preprocessing function shared by training and serving."""

from __future__ import annotations

import numpy as np

from vidtag.runtime.artifact import InputSpec


def preprocess(frames: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (3, T, H, W) float32, scaled to [0, 1] then normalised."""
    if frames.shape != (spec.frames, spec.height, spec.width, 3):
        raise ValueError(
            f"frames have shape {frames.shape}, the model wants "
            f"{(spec.frames, spec.height, spec.width, 3)}"
        )
    x = frames.astype(np.float32).transpose(3, 0, 1, 2) * np.float32(1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1, 1)
    inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1, 1)
    return np.ascontiguousarray((x - mean) * inv_std)
