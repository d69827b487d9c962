"""Pairwise ranking heads on the network's logits: WARP and LSEP, with LSEP's label decision
module (a predicted label count and/or per-tag thresholds)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidtag.heads.base import MultiLabelHead, positives
from vidtag.heads.registry import register_head


def _pairs(pos: Tensor, neg: Tensor) -> Tensor:
    """(N, C, C) bool, [i, p, n] = p is a positive and n a negative of sample i."""
    return pos[:, :, None] & neg[:, None, :]


def _valid(pos: Tensor, neg: Tensor) -> Tensor:
    """(N,) samples with at least one positive and one negative."""
    return pos.any(1) & neg.any(1)


def harmonic(
    n: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """[H_0 .. H_n], H_r = sum_{j=1..r} 1/j (WARP's rank weight L(r) with alpha_j = 1/j)."""
    h = torch.zeros(n + 1, device=device, dtype=dtype)
    h[1:] = torch.cumsum(1.0 / torch.arange(1, n + 1, device=device, dtype=dtype), 0)
    return h


def warp_loss(logits: Tensor, targets: Tensor, normalise: bool = True) -> Tensor:
    """WARP with the exact rank (Weston et al. 2011, in the multi-label form of Gong et al. 2013).

    For sample i with positives P and negatives N: J_i = sum_{p,n} L(r_p) max(0, 1 - s_p + s_n),
    r_p = #{n : 1 - s_p + s_n > 0} (the number of negatives violating the margin, the exact value
    of the rank WARP estimates by sampling), L(r) = sum_{j<=r} 1/j (no gradient through L).
    `normalise` divides J_i by |P||N|; the loss is the mean of J_i over samples with at least
    one positive and one negative (0 when there is none).
    """
    pos = positives(targets)
    neg = ~pos
    valid = _valid(pos, neg)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    s, pos, neg = logits[valid], pos[valid], neg[valid]
    pairs = _pairs(pos, neg)
    margin = 1.0 - s[:, :, None] + s[:, None, :]  # [i, p, n]
    hinge = margin.clamp(min=0.0) * pairs
    with torch.no_grad():
        rank = ((margin > 0) & pairs).sum(2)  # (M, C): violating negatives per positive
        weight = harmonic(s.shape[1], s.device, s.dtype)[rank]
    per = (weight[:, :, None] * hinge).sum((1, 2))
    if normalise:
        per = per / (pos.sum(1) * neg.sum(1)).to(per.dtype)
    return per.mean()


def lsep_loss(logits: Tensor, targets: Tensor, negatives: Tensor | None = None) -> Tensor:
    """LSEP (Li et al., CVPR 2017), per sample and averaged over samples.

    l_i = log(1 + sum_{p in Y_i, n not in Y_i} exp(s_n - s_p)), computed as the logsumexp of
    {0} and all pair differences (stable for any logit scale). `negatives` (N, C bool) restricts
    the pairs to sampled negatives. Mean over samples with at least one pair (0 when none).
    Unlike the reference implementation's single log over the whole batch's pair sum, each
    sample has its own log.
    """
    pos = positives(targets)
    neg = ~pos if negatives is None else negatives & ~pos
    valid = _valid(pos, neg)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    s, pos, neg = logits[valid], pos[valid], neg[valid]
    diff = s[:, None, :] - s[:, :, None]  # [i, p, n] = s_n - s_p
    terms = diff.masked_fill(~_pairs(pos, neg), float("-inf")).flatten(1)
    terms = torch.cat([terms.new_zeros(len(terms), 1), terms], 1)
    return torch.logsumexp(terms, 1).mean()


def sample_negatives(targets: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """(N, C) bool: min(k, |negatives|) negatives per sample, uniformly without replacement."""
    neg = ~positives(targets)
    keys = torch.rand(neg.shape, generator=generator, device=generator.device)
    keys = keys.to(neg.device).masked_fill(~neg, -1.0)
    idx = keys.topk(min(k, neg.shape[1]), dim=1).indices
    chosen = torch.zeros_like(neg).scatter(1, idx, True)
    return chosen & neg


def top_k_mask(scores: Tensor, k: Tensor) -> Tensor:
    """(N, C) bool: the k[i] highest scores of each row (ties: lower index first)."""
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    rank = torch.argsort(order, dim=1)
    return rank < k[:, None]


class RankingHead(MultiLabelHead):
    """A pairwise ranking loss on the logits plus the label decision module of Li et al. 2017:
    an MLP predicting the label count k (classes 0..max_count) from the embedding (or from the
    scores, detached), trained with cross-entropy on the true count alongside the ranking loss;
    and/or per-tag thresholds. predict = the top k scores by the predicted count (or a fixed
    `top_k`, Gong et al.'s rule), intersected with the thresholds once `set_thresholds` was
    called; without a count, scores >= thresholds. scores = sigmoid(logits) (rank-preserving;
    exportable, though the count decision needs this head's MLP on the embedding)."""

    exportable = True

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        *,
        count: bool = True,
        count_from: Literal["embedding", "scores"] = "embedding",
        count_hidden: int = 64,
        count_weight: float = 1.0,
        max_count: int | None = None,
        top_k: int = 0,
    ) -> None:
        super().__init__(num_classes, embedding_size)
        if count_from not in ("embedding", "scores"):
            raise ValueError(f"count_from must be 'embedding' or 'scores', not {count_from!r}")
        self.count_from = count_from
        self.count_weight = count_weight
        self.max_count = num_classes if max_count is None else max_count
        self.top_k = top_k
        n_in = embedding_size if count_from == "embedding" else num_classes
        self.count_mlp: nn.Module | None = (
            nn.Sequential(
                nn.Linear(n_in, count_hidden),
                nn.ReLU(),
                nn.Linear(count_hidden, self.max_count + 1),
            )
            if count
            else None
        )

    @abstractmethod
    def rank_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The framework's ranking loss on (N, C) logits."""

    def count_logits(self, logits: Tensor, embedding: Tensor) -> Tensor:
        """(N, max_count + 1) label-count class logits."""
        assert self.count_mlp is not None
        if self.count_from == "embedding":
            return self.count_mlp(embedding.float())
        # From the scores the count branch is a read-out: it must not reshape the ranking.
        return self.count_mlp(logits.detach().float().sigmoid())

    def loss(self, logits: Tensor, embedding: Tensor, targets: Tensor) -> Tensor:
        loss = self.rank_loss(logits.float(), targets.float())
        if self.count_mlp is not None:
            k = targets.float().sum(1).round().long().clamp(0, self.max_count)
            loss = loss + self.count_weight * F.cross_entropy(
                self.count_logits(logits, embedding), k
            )
        return loss

    def scores(self, logits: Tensor, embedding: Tensor) -> Tensor:
        return logits.float().sigmoid()

    def predicted_count(self, logits: Tensor, embedding: Tensor) -> Tensor:
        """(N,) long: the label count the decision module predicts."""
        return self.count_logits(logits, embedding).argmax(1)

    def predict(self, logits: Tensor, embedding: Tensor) -> Tensor:
        scores = self.scores(logits, embedding)
        if self.count_mlp is not None:
            k = self.predicted_count(logits, embedding)
        elif self.top_k > 0:
            k = torch.full((len(scores),), self.top_k, device=scores.device)
        else:
            return scores >= self.thresholds
        chosen = top_k_mask(scores, k)
        return chosen & (scores >= self.thresholds) if bool(self.has_thresholds) else chosen


@register_head("warp")
class WARPHead(RankingHead):
    """WARP (Weston, Bengio & Usunier, IJCAI 2011; for multi-label images Gong et al. 2013
    "Deep Convolutional Ranking for Multilabel Image Annotation", arXiv:1312.4894): see `warp_loss`.
    Decision: LSEP's label decision module (`count=False, top_k=k` for Gong et al.'s top-k)."""

    def __init__(
        self, num_classes: int, embedding_size: int, *, normalise: bool = True, **kw: Any
    ) -> None:
        super().__init__(num_classes, embedding_size, **kw)
        self.normalise = normalise

    def rank_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return warp_loss(logits, targets, self.normalise)


@register_head("lsep")
class LSEPHead(RankingHead):
    """LSEP (Li, Song & Luo, CVPR 2017 "Improving Pairwise Ranking for Multi-label Image
    Classification"): see `lsep_loss`; label decision module as in `RankingHead`.
    `neg_samples=k` keeps k random negatives per sample (the paper's pair sampling), drawn
    from a generator seeded with `seed` (reproducible sequence of draws)."""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        *,
        neg_samples: int = 0,
        seed: int = 0,
        **kw: Any,
    ) -> None:
        super().__init__(num_classes, embedding_size, **kw)
        self.neg_samples = neg_samples
        self.generator = torch.Generator().manual_seed(seed)

    def rank_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        negs = (
            sample_negatives(targets, self.neg_samples, self.generator)
            if self.neg_samples > 0
            else None
        )
        return lsep_loss(logits, targets, negs)
