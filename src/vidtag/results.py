"""Result types shared by the in-process Tagger and the gRPC client (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TagScore:
    name: str
    score: float
    group: str


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    duration: float
    fps: float
    codec: str
    rotation: int
    frames_decoded: int
    sampled_timestamps: tuple[float, ...]


@dataclass(frozen=True)
class TagResult:
    tags: tuple[TagScore, ...]  # ranked by score, after thresholds and top-k
    embedding: np.ndarray | None  # float32 (D,), L2-normalised
    model_name: str
    model_version: str
    video: VideoInfo
    timings: dict[str, float]  # seconds: decode, preprocess, inference, postprocess, total
    all_scores: np.ndarray  # float32 (C,) sigmoid score of every tag, in the artifact's tag order


__all__ = ["TagResult", "TagScore", "VideoInfo"]
