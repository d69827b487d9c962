"""Label-aware augmentations: flips and time reversal swap the motion tags they mirror."""

from __future__ import annotations

import numpy as np

HFLIP_SWAPS = (("move_left", "move_right"),)
VFLIP_SWAPS = (("move_up", "move_down"),)
REVERSE_SWAPS = (("move_left", "move_right"), ("move_up", "move_down"), ("zoom_in", "zoom_out"))


def _swap(y: np.ndarray, pairs: tuple[tuple[str, str], ...], index: dict[str, int]) -> np.ndarray:
    y = y.copy()
    for a, b in pairs:
        if a in index and b in index:
            ia, ib = index[a], index[b]
            y[ia], y[ib] = y[ib], y[ia]
    return y


def augment(
    frames: np.ndarray, y: np.ndarray, rng: np.random.Generator, index: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """frames (T, H, W, 3) uint8; each transform applied with probability 1/2."""
    if rng.random() < 0.5:
        frames, y = frames[:, :, ::-1], _swap(y, HFLIP_SWAPS, index)
    if rng.random() < 0.5:
        frames, y = frames[:, ::-1], _swap(y, VFLIP_SWAPS, index)
    if rng.random() < 0.5:
        frames, y = frames[::-1], _swap(y, REVERSE_SWAPS, index)
    return np.ascontiguousarray(frames), y
