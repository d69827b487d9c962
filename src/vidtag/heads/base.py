"""The interface every multi-label framework implements, so the trainer can use any by name.

A head consumes what the network returns, `(logits (N, C), embedding (N, E))`, owns whatever
parameters its framework adds (decoders, count estimators, label encoders) and defines three
things: the training loss, per-tag scores in [0, 1] (for ranking metrics such as mAP) and its
own set decision (`predict`). Calling the module (`head(logits, embedding, targets)`) is `loss`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn


class MultiLabelHead(nn.Module, ABC):
    """Consumes the network's (logits (N,C), embedding (N,E)); owns any extra parameters.

    `exportable` is True when `scores` is a fixed function of the logits alone, so that the
    ONNX artifact can be the network only (the serving decision rule then applies thresholds);
    otherwise the head's own modules are needed at inference.
    """

    exportable: bool = False
    thresholds: Tensor
    has_thresholds: Tensor

    def __init__(self, num_classes: int, embedding_size: int) -> None:
        super().__init__()
        if num_classes < 1 or embedding_size < 1:
            raise ValueError("num_classes and embedding_size must be positive")
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.register_buffer("thresholds", torch.full((num_classes,), 0.5))
        self.register_buffer("has_thresholds", torch.tensor(False))

    @abstractmethod
    def loss(self, logits: Tensor, embedding: Tensor, targets: Tensor) -> Tensor:
        """Scalar training loss; `targets` is (N, C) float in {0, 1}."""

    @abstractmethod
    def scores(self, logits: Tensor, embedding: Tensor) -> Tensor:
        """(N, C) per-tag scores in [0, 1] (those of the inference rule), for ranking/mAP."""

    def predict(self, logits: Tensor, embedding: Tensor) -> Tensor:
        """(N, C) bool tag sets by the framework's own rule (default: scores >= thresholds)."""
        return self.scores(logits, embedding) >= self.thresholds

    def decode(self, logits: Tensor, embedding: Tensor) -> tuple[Tensor, Tensor]:
        """`(scores, predict)` in one pass (heads whose decoding is costly share it)."""
        return self.scores(logits, embedding), self.predict(logits, embedding)

    def set_thresholds(self, thresholds: Sequence[float] | np.ndarray | Tensor) -> None:
        """Per-tag score thresholds (e.g. `calibrate_thresholds` on validation scores)."""
        if isinstance(thresholds, Tensor):
            t = thresholds.detach().float().reshape(-1)
        else:
            t = torch.as_tensor(np.asarray(thresholds, dtype=np.float32)).reshape(-1)
        if t.numel() != self.num_classes:
            raise ValueError(f"expected {self.num_classes} thresholds, got {t.numel()}")
        self.thresholds.copy_(t)
        self.has_thresholds.fill_(True)

    def forward(self, logits: Tensor, embedding: Tensor, targets: Tensor) -> Tensor:
        return self.loss(logits, embedding, targets)


def positives(targets: Tensor) -> Tensor:
    """(N, C) bool of the true tags of {0, 1} float targets."""
    return targets > 0.5


def keep_in_graph(loss: Tensor, *ignored: Tensor) -> Tensor:
    """`loss` plus 0 x the inputs a head ignores (e.g. the logits): their producers (the
    network's classifier) then get zero gradients rather than none, so that DDP without
    `find_unused_parameters` sees every parameter used."""
    return loss + sum((t.float().sum() * 0.0 for t in ignored), loss.new_zeros(()))
