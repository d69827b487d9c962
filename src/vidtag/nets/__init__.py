"""PyTorch video networks behind a registry."""

from vidtag.nets import eco as _eco  # noqa: F401  (registers its builders)
from vidtag.nets import mfnet as _mfnet  # noqa: F401  (registers its builders)
from vidtag.nets import r2plus1d as _r2plus1d  # noqa: F401  (registers its builders)
from vidtag.nets import x2plus1d as _x2plus1d  # noqa: F401  (registers its builders)
from vidtag.nets.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
