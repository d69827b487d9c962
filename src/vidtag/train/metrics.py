"""The SYNTH_SPEC metrics: mean Jaccard, mAP, micro/macro F1, Hit@1, per-group accuracy."""

from __future__ import annotations

import dataclasses

import numpy as np

from vidtag.runtime.decision import DecisionRule

NEVER = 2.0  # a threshold no score in [0, 1] reaches


def jaccard(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-row |P ∩ T| / |P ∪ T| of boolean (N, C) arrays (1 where both are empty)."""
    inter = (pred & true).sum(1)
    union = (pred | true).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """AP of one tag: mean precision at each true positive, ranked by score (nan if no positive)."""
    if not truth.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = truth[order].astype(np.float64)
    prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((prec * hits).sum() / hits.sum())


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)


def evaluate_predictions(
    scores: np.ndarray,
    pred: np.ndarray,
    true: np.ndarray,
    tags: tuple[str, ...],
    groups: dict[str, tuple[str, ...]],
) -> dict[str, float]:
    """All metrics from scores (N, C), predicted sets (N, C bool) and true sets (N, C bool)."""
    pred, true = pred.astype(bool), true.astype(bool)
    tp = (pred & true).sum(0)
    fp = (pred & ~true).sum(0)
    fn = (~pred & true).sum(0)
    aps = [average_precision(scores[:, c], true[:, c]) for c in range(true.shape[1])]
    top1 = scores.argmax(1)
    out: dict[str, float] = {
        "clips": float(len(true)),
        "mean_jaccard": float(jaccard(pred, true).mean()),
        "mAP": float(np.nanmean(aps)),
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": float(_f1(tp, fp, fn).mean()),
        "hit_at_1": float(true[np.arange(len(true)), top1].mean()),
        "exact_match": float((pred == true).all(1).mean()),
    }
    index = {t: i for i, t in enumerate(tags)}
    for g, members in groups.items():
        cols = [index[t] for t in members if t in index]
        out[f"acc_{g}"] = float((pred[:, cols] == true[:, cols]).all(1).mean())
    return out


def per_tag(
    scores: np.ndarray, pred: np.ndarray, true: np.ndarray, tags: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """AP, F1 and support of each tag."""
    pred, true = pred.astype(bool), true.astype(bool)
    tp, fp, fn = (pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)
    f1 = _f1(tp, fp, fn)
    return {
        t: {
            "ap": average_precision(scores[:, c], true[:, c]),
            "f1": float(f1[c]),
            "support": float(true[:, c].sum()),
        }
        for c, t in enumerate(tags)
    }


def calibrate_thresholds(scores: np.ndarray, true: np.ndarray, grid: int = 37) -> np.ndarray:
    """Per-tag threshold maximising that tag's F1 on a validation set (0.5 where it has no data)."""
    cands = np.linspace(0.05, 0.95, grid)
    out = np.full(true.shape[1], 0.5)
    for c in range(true.shape[1]):
        t = true[:, c].astype(bool)
        if not t.any():
            continue
        best = -1.0
        for th in cands:
            p = scores[:, c] >= th
            f = float(
                _f1(np.array((p & t).sum()), np.array((p & ~t).sum()), np.array((~p & t).sum()))
            )
            if f > best + 1e-12:
                best, out[c] = f, th
    return out


def calibrate_jaccard(
    scores: np.ndarray, true: np.ndarray, rule: DecisionRule, grid: int = 33, passes: int = 4
) -> np.ndarray:
    """Per-tag thresholds maximising the mean Jaccard of `rule` (its group limits, min_tags and
    top_k included) on a validation set, by coordinate ascent over quantiles of each tag's
    scores (the lowest: always; NEVER). It starts from the better of the per-tag F1
    thresholds and the constant frequency-prior set, so on validation the rule is never worse
    than the best constant answer."""
    true = true.astype(bool)
    _, prior = frequency_prior(true)

    def score(th: np.ndarray) -> float:
        pred = dataclasses.replace(rule, thresholds=tuple(th.tolist())).predict(scores)
        return float(jaccard(pred, true).mean())

    starts = [calibrate_thresholds(scores, true), np.where(prior, 0.0, NEVER)]
    values = [score(t) for t in starts]
    th, best = starts[int(np.argmax(values))].copy(), max(values)
    cands = [
        np.append(np.unique(np.quantile(scores[:, c], np.linspace(0, 1, grid))), NEVER)
        for c in range(true.shape[1])
    ]
    for _ in range(passes):
        improved = False
        for c in range(true.shape[1]):
            keep = th[c]
            for v in cands[c]:
                th[c] = v
                if (s := score(th)) > best + 1e-9:
                    best, keep, improved = s, v, True
            th[c] = keep
        if not improved:
            break
    return th


def frequency_prior(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The baseline that never looks at a clip: (scores (C,), tag set (C,) bool). The scores
    are the tags' training frequencies; the set is the one constant set with the best mean
    Jaccard on the training labels, grown greedily from the most frequent tag while it helps."""
    true = train.astype(bool)
    freq = true.mean(0)
    chosen = np.zeros(true.shape[1], dtype=bool)
    best = -1.0
    for c in np.argsort(-freq, kind="stable"):
        trial = chosen.copy()
        trial[c] = True
        score = float(jaccard(np.broadcast_to(trial, true.shape), true).mean())
        if score <= best:
            break
        chosen, best = trial, score
    return freq.astype(np.float32), chosen
