"""Binary relevance as a head (the `bce` loss of the loss registry, with its threshold rule)."""

from __future__ import annotations

from torch import Tensor

from vidtag.heads.base import MultiLabelHead
from vidtag.heads.registry import BinaryRelevance, register_head


@register_head("bce")
class BCEHead(MultiLabelHead):
    """Binary relevance: one sigmoid cross-entropy per tag, mean over N*C (the classic
    one-vs-rest reduction, e.g. Tsoumakas & Katakis 2007). scores = sigmoid(logits);
    predict = scores >= per-tag thresholds (0.5 until `set_thresholds`)."""

    exportable = True

    def __init__(
        self, num_classes: int, embedding_size: int, pos_weight: Tensor | None = None
    ) -> None:
        super().__init__(num_classes, embedding_size)
        self.criterion = BinaryRelevance(pos_weight)

    def loss(self, logits: Tensor, embedding: Tensor, targets: Tensor) -> Tensor:
        return self.criterion(logits.float(), targets.float())

    def scores(self, logits: Tensor, embedding: Tensor) -> Tensor:
        return logits.float().sigmoid()
