"""Network registry: `@register_model("name")` on a builder; `create_model("name", ...)` builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ModelBuilder = Callable[..., nn.Module]
_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def deco(fn: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def create_model(name: str, **kwargs: Any) -> nn.Module:
    try:
        builder = _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {sorted(_MODELS)}") from None
    return builder(**kwargs)


def list_models() -> list[str]:
    return sorted(_MODELS)
