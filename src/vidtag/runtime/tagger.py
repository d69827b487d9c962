"""In-process API: `Tagger(model_dir).tag(path_or_bytes)` -> ranked tags, embedding, timings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from vidtag.decode import DecodedClip, DecodeLimits, sample_frames
from vidtag.decode.source import Input
from vidtag.decode.warmup import encode_in_memory
from vidtag.results import TagResult, TagScore, VideoInfo
from vidtag.runtime.artifact import load_meta
from vidtag.runtime.backends import Backend, RuntimeOptions, create_backend
from vidtag.runtime.preprocess import preprocess
from vidtag.runtime.repository import default_repository, resolve_model


def _warmup_clip(frames: int = 12, size: int = 64) -> bytes:
    return encode_in_memory(
        size,
        size,
        frames,
        lambda i: np.full((size, size, 3), 30 + 10 * i, dtype=np.uint8),
        options={"preset": "ultrafast", "g": "4"},
    )


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Tagger:
    """Decode -> preprocess -> network -> thresholds. Thread-safe.

    The network runs on ONNX Runtime (CPU) unless `runtime` says otherwise (the PyTorch
    runtime, on the CPU or a CUDA device; see RuntimeOptions)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        limits: DecodeLimits | None = None,
        threads: int | None = None,
        sampling: dict[str, Any] | None = None,
        runtime: RuntimeOptions | None = None,
        decode_backend: str = "pyav",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.decode_backend = decode_backend  # `decode`'s; the server decodes on its own
        self.meta = load_meta(self.model_dir)
        self.name, self.version = self.meta.name, self.meta.version
        self.limits = limits or DecodeLimits()
        self.spec = self.meta.sampling_spec(**(sampling or {}))
        self.runtime = runtime or RuntimeOptions()
        spec = self.meta.input
        self.backend = create_backend(
            self.model_dir / self.meta.network_file,
            self.runtime,
            threads=threads,
            input_shape=(3, spec.frames, spec.height, spec.width),
        )
        self._group = {t: g for g, ts in self.meta.groups.items() for t in ts}
        self.rule = self.meta.decision_rule()

    @classmethod
    def from_repository(
        cls,
        repo: str | Path | None = None,
        name: str | None = None,
        version: str | None = None,
        **kw: Any,
    ) -> Tagger:
        return cls(resolve_model(repo or default_repository(), name, version), **kw)

    def warmup(self) -> None:
        """Run the whole path once on a clip made in memory (first decode and first inference
        each cost several times a warm one)."""
        self.tag(_warmup_clip())

    def decode(self, source: Input) -> DecodedClip:
        return sample_frames(source, self.spec, self.limits, self.decode_backend)

    def infer(self, batch: Any, backend: Backend | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sigmoid scores (N, C) and L2-normalised embeddings (N, E) of a preprocessed batch,
        a numpy array or (torch runtime) a tensor (on `backend`, another session of the same
        network, if given)."""
        logits, emb = (backend or self.backend)(batch)
        e = emb.astype(np.float32)
        e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return sigmoid(logits), e

    def result(
        self,
        clip: DecodedClip,
        scores: np.ndarray,
        embedding: np.ndarray,
        timings: dict[str, float],
        top_k: int | None = None,
        threshold: float | None = None,
    ) -> TagResult:
        """The decision rule and ranking applied to one clip's scores (C,) and embedding (E,)."""
        chosen = self.rule.select(scores, top_k, threshold)
        tags = tuple(
            TagScore(self.meta.tags[i], float(scores[i]), self._group.get(self.meta.tags[i], ""))
            for i in chosen
        )
        video = VideoInfo(
            width=clip.width,
            height=clip.height,
            duration=clip.duration,
            fps=clip.fps,
            codec=clip.codec,
            rotation=clip.rotation,
            frames_decoded=clip.frames_decoded,
            sampled_timestamps=clip.timestamps,
        )
        return TagResult(tags, embedding, self.name, self.version, video, timings, scores)

    def tag(
        self,
        source: Input,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
    ) -> TagResult:
        t0 = time.perf_counter()
        clip = self.decode(source)
        t1 = time.perf_counter()
        x = preprocess(clip.frames, self.meta.input)[None]
        t2 = time.perf_counter()
        scores, emb = self.infer(x)
        t3 = time.perf_counter()
        timings = {"decode": t1 - t0, "preprocess": t2 - t1, "inference": t3 - t2}
        out = self.result(clip, scores[0], emb[0], timings, top_k, threshold)
        t4 = time.perf_counter()
        out.timings.update(postprocess=t4 - t3, total=t4 - t0)
        return out
