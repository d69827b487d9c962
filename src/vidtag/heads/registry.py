"""Loss registry: `@register_loss("name")` on a builder of a (logits, targets) -> loss module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

LossBuilder = Callable[..., nn.Module]
_LOSSES: dict[str, LossBuilder] = {}


def register_loss(name: str) -> Callable[[LossBuilder], LossBuilder]:
    def deco(fn: LossBuilder) -> LossBuilder:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        _LOSSES[name] = fn
        return fn

    return deco


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    try:
        return _LOSSES[name](**kwargs)
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known: {sorted(_LOSSES)}") from None


def list_losses() -> list[str]:
    return sorted(_LOSSES)


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
