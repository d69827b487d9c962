"""Single-label video evaluation (the UCF101 protocol): Clip@1, Video@1 and clip start times.

Each video is scored on N clips (e.g. 10 uniformly spaced ones, `clips_per_video`); Clip@1 is
the top-1 accuracy over all clips, Video@1 the top-1 accuracy of each video's mean clip score.
Average whatever scores the caller passes (logits or probabilities); ties go to the lower class.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def _check(
    scores: np.ndarray, video_ids: Sequence[Hashable], labels: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 2:
        raise ValueError(f"scores must be (clips, classes), not shape {s.shape}")
    if not len(s) == len(y) == len(video_ids):
        raise ValueError(
            f"scores, video_ids and labels differ in length: {len(s)}, {len(video_ids)}, {len(y)}"
        )
    if len(s) == 0:
        raise ValueError("no clips to evaluate")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= s.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {s.shape[1]})")
    return s, y


def clip_at_1(
    scores_per_clip: np.ndarray,
    video_ids: Sequence[Hashable],
    labels: Sequence[int] | np.ndarray,
) -> float:
    """Top-1 accuracy over clips: scores (M, C), the video of each clip (M,), labels (M,)."""
    s, y = _check(scores_per_clip, video_ids, labels)
    return float((s.argmax(1) == y).mean())


def video_at_1(
    scores_per_clip: np.ndarray,
    video_ids: Sequence[Hashable],
    labels: Sequence[int] | np.ndarray,
) -> float:
    """Top-1 accuracy over videos of the mean of each video's clip scores (same inputs as
    `clip_at_1`). All clips of a video must carry the same label."""
    s, y = _check(scores_per_clip, video_ids, labels)
    rows: dict[Hashable, list[int]] = {}
    for i, v in enumerate(video_ids):
        rows.setdefault(v, []).append(i)
    hits = 0
    for v, idx in rows.items():
        truth = np.unique(y[idx])
        if len(truth) != 1:
            raise ValueError(f"video {v!r}: its clips disagree on the label ({truth.tolist()})")
        hits += int(s[idx].mean(0).argmax() == truth[0])
    return hits / len(rows)


def clips_per_video(duration: float, n: int, clip_seconds: float) -> list[float]:
    """Start times (s) of `n` clips of `clip_seconds` spread uniformly over a video: the first
    at 0, the last ending at `duration`; one clip is centred; all start at 0 when the video is
    shorter than a clip. Feed each to `SamplingSpec(mode="dense", start=...)`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    if clip_seconds <= 0 or duration < 0:
        raise ValueError(f"need clip_seconds > 0 and duration >= 0 ({clip_seconds}, {duration})")
    span = max(duration - clip_seconds, 0.0)
    if n == 1:
        return [span / 2]
    return [float(t) for t in np.linspace(0.0, span, n)]
