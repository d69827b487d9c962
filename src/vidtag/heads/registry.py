"""Loss registry: `@register_loss("name")` on a builder of a (logits, targets) -> loss module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vidtag.registry import Registry

LossBuilder = Callable[..., nn.Module]
LOSSES: Registry[LossBuilder] = Registry("loss")
register_loss = LOSSES.register
list_losses = LOSSES.names


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    return LOSSES.get(name)(**kwargs)


class BinaryRelevance(nn.Module):
    """Binary relevance: one independent sigmoid cross-entropy per tag (decision: thresholds)."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=self.pos_weight
        )


@register_loss("bce")
def bce(**kw: Any) -> nn.Module:
    return BinaryRelevance(**kw)
