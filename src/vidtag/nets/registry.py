"""Network registry: `@register_model("name")` on a builder; `create_model("name", ...)` builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from vidtag.registry import Registry

ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")
register_model = MODELS.register
list_models = MODELS.names


def create_model(name: str, **kwargs: Any) -> nn.Module:
    return MODELS.get(name)(**kwargs)
