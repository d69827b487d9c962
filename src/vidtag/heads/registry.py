"""Registries: losses (`@register_loss`, builders of a (logits, targets) -> loss module) and
multi-label heads (`@register_head`, `MultiLabelHead` classes built with the label count and
the network's embedding size)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from vidtag.heads.base import MultiLabelHead
from vidtag.registry import Registry

LossBuilder = Callable[..., nn.Module]
LOSSES: Registry[LossBuilder] = Registry("loss")
register_loss = LOSSES.register
list_losses = LOSSES.names

HEADS: Registry[type[MultiLabelHead]] = Registry("head")
list_heads = HEADS.names
H = TypeVar("H", bound=type[MultiLabelHead])


def register_head(name: str) -> Callable[[H], H]:
    """Class decorator: make a `MultiLabelHead` subclass available as `create_head(name)`."""

    def deco(cls: H) -> H:
        HEADS.register(name)(cls)
        return cls

    return deco


def create_head(
    name: str, *, num_classes: int, embedding_size: int, **kwargs: Any
) -> MultiLabelHead:
    return HEADS.get(name)(num_classes=num_classes, embedding_size=embedding_size, **kwargs)


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
