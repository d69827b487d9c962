"""From per-tag scores to a tag set: thresholds, group limits, top-k (shared by training's
validation and serving, so the metrics reported are those of the served rule)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DecisionRule:
    tags: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]
    thresholds: tuple[float, ...]
    # Per group (min, max) tags a clip carries (max 0: unbounded), e.g. from the label structure
    # of the training set. Applied after the thresholds; a request's own threshold skips them.
    group_limits: dict[str, tuple[int, int]] = field(default_factory=dict)
    min_tags: int = 1
    top_k: int = 0

    def select(
        self, scores: np.ndarray, top_k: int | None = None, threshold: float | None = None
    ) -> list[int]:
        """Indices of the chosen tags, best first."""
        order = [int(i) for i in np.argsort(-scores, kind="stable")]
        if threshold is not None:
            keep = {i for i in order if scores[i] >= threshold}
        else:
            keep = {i for i in order if scores[i] >= self.thresholds[i]}
            for group, (lo, hi) in self.group_limits.items():
                members = [i for i in order if self.tags[i] in self.groups.get(group, ())]
                chosen = [i for i in members if i in keep]
                wanted = members[:lo] if len(chosen) < lo else chosen[:hi] if hi else chosen
                keep = (keep - set(chosen)) | set(wanted)
        ranked = [i for i in order if i in keep]
        if len(ranked) < self.min_tags:
            ranked = order[: self.min_tags]
        k = top_k if top_k else self.top_k
        return ranked[:k] if k else ranked

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Boolean (N, C) tag sets for (N, C) scores: `select` of every row, vectorised (the
        threshold calibration evaluates thousands of rules)."""
        scores = np.asarray(scores)
        n, c = scores.shape
        order = np.argsort(-scores, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(c)[None].repeat(n, 0), axis=1)
        keep = scores >= np.asarray(self.thresholds)[None]
        for group, (lo, hi) in self.group_limits.items():
            cols = [i for i, t in enumerate(self.tags) if t in self.groups.get(group, ())]
            if not cols:
                continue
            sub_rank = rank[:, cols]
            chosen = keep[:, cols]
            by_score = _ranks(sub_rank)  # a member's place in its group, best first
            by_chosen = _ranks(np.where(chosen, sub_rank, c + sub_rank))
            count = chosen.sum(1, keepdims=True)
            wanted = np.where(
                count < lo, by_score < lo, chosen & (by_chosen < hi) if hi else chosen
            )
            keep[:, cols] = wanted
        few = keep.sum(1) < self.min_tags
        if few.any():
            keep[few] = rank[few] < self.min_tags
        if self.top_k:
            keep &= _ranks(np.where(keep, rank, c + rank)) < self.top_k
        return keep


def _ranks(keys: np.ndarray) -> np.ndarray:
    """Each entry's 0-based place in its row, smallest key first (keys distinct per row)."""
    return np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")


def observed_group_limits(
    labels: np.ndarray, tags: tuple[str, ...], groups: dict[str, tuple[str, ...]]
) -> dict[str, tuple[int, int]]:
    """(min, max) count per group over a multi-hot label matrix (max 0 if it reaches the group
    size, i.e. no bound was seen)."""
    index = {t: i for i, t in enumerate(tags)}
    limits = {}
    for g, members in groups.items():
        cols = [index[t] for t in members if t in index]
        counts = labels[:, cols].sum(1)
        hi = int(counts.max())
        limits[g] = (int(counts.min()), 0 if hi >= len(cols) else hi)
    return limits
