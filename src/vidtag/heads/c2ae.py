"""C2AE: canonical-correlated autoencoder (Yeh, Wu, Ko & Wang, AAAI 2017, "Learning Deep Latent
Spaces for Multi-Label Classification"), following the paper and its reference code
(github.com/chihkuanyeh/C2AE: `CORR_error.m`, `BR_error.m`, `DCCA_grad.m`)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn

from vidtag.heads.base import MultiLabelHead, keep_in_graph, positives
from vidtag.heads.registry import register_head


class _ZeroMeanSigmoid(nn.Module):
    """sigmoid(x) - 0.5: the encoders' last activation in the reference code."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x) - 0.5


def _mlp(sizes: list[int], last: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        layers.append(last if i == len(sizes) - 2 else nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


def ranking_output_loss(out: Tensor, targets: Tensor, beta: float = 5.0) -> Tensor:
    """C2AE's label-correlation-aware output loss (the BP-MLL pairwise form, Zhang & Zhou 2006):
    E_i = 1/(|Y_i||Y_i^c|) sum_{p in Y_i, q not in Y_i} exp(-beta (o_p - o_q)), mean over
    samples with both kinds of label (beta = 5 as fixed in the reference code; 1 in the paper's
    equation)."""
    pos = positives(targets)
    neg = ~pos
    valid = pos.any(1) & neg.any(1)
    if not bool(valid.any()):
        return out.sum() * 0.0
    o, pos, neg = out[valid], pos[valid], neg[valid]
    pairs = pos[:, :, None] & neg[:, None, :]
    e = torch.exp(-beta * (o[:, :, None] - o[:, None, :])) * pairs
    return (e.sum((1, 2)) / (pos.sum(1) * neg.sum(1)).to(e.dtype)).mean()


@register_head("c2ae")
class C2AEHead(MultiLabelHead):
    """C2AE. Feature encoder F_x (embedding -> latent, layers `hidden, hidden, latent`), label
    encoder F_e (labels -> latent, `hidden, latent`), both ending in sigmoid - 0.5, and decoder
    F_d (latent -> `hidden` -> C, sigmoid).

    loss = Phi + alpha * Gamma with
      Phi   = (||Z_x - Z_e||^2 + lam (||Z_x^T Z_x - I||^2 + ||Z_e^T Z_e - I||^2)) / N,
              Z_x = F_x(x), Z_e = F_e(y) (N, latent): the paper's Lagrangian relaxation of the
              CCA-style constraints Z_x^T Z_x = Z_e^T Z_e = I (lam = 0.5 as in the reference code,
              which sums over the batch; here divided by N so that the scale is per sample);
      Gamma = `ranking_output_loss`(F_d(Z_e), y), reaching F_e and F_d only (F_x learns from Phi).
    Inference: scores = F_d(F_x(x)); predict = scores >= thresholds (0.5: the reference
    code's rounding). latent defaults to round(0.8 C), the reference code's reduction rate.
    The network's logits are not used (zero gradient, `keep_in_graph`).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        *,
        latent_size: int | None = None,
        hidden: int = 512,
        alpha: float = 1.0,
        lam: float = 0.5,
        beta: float = 5.0,
    ) -> None:
        super().__init__(num_classes, embedding_size)
        latent = latent_size or max(1, round(0.8 * num_classes))
        self.alpha, self.lam, self.beta = alpha, lam, beta
        self.fx = _mlp([embedding_size, hidden, hidden, latent], _ZeroMeanSigmoid())
        self.fe = _mlp([num_classes, hidden, latent], _ZeroMeanSigmoid())
        self.fd = _mlp([latent, hidden, num_classes], nn.Sigmoid())

    def correlation_loss(self, zx: Tensor, ze: Tensor) -> Tensor:
        """Phi: latent alignment plus the orthonormality (CCA) penalties, per sample."""
        eye = torch.eye(zx.shape[1], device=zx.device, dtype=zx.dtype)
        align = (zx - ze).pow(2).sum()
        ortho = (zx.T @ zx - eye).pow(2).sum() + (ze.T @ ze - eye).pow(2).sum()
        return (align + self.lam * ortho) / len(zx)

    def loss(self, logits: Tensor, embedding: Tensor, targets: Tensor) -> Tensor:
        y = targets.float()
        zx, ze = self.fx(embedding.float()), self.fe(y)
        loss = self.correlation_loss(zx, ze) + self.alpha * ranking_output_loss(
            self.fd(ze), y, self.beta
        )
        return keep_in_graph(loss, logits)

    def scores(self, logits: Tensor, embedding: Tensor) -> Tensor:
        return self.fd(self.fx(embedding.float()))
