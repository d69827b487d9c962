"""vidtag: fast short-video tagging (decode, sample, infer, serve)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from vidtag.runtime.tagger import Tagger

__all__ = ["Tagger", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import vidtag` does not load ONNX Runtime or PyAV.
    if name == "Tagger":
        from vidtag.runtime.tagger import Tagger

        return Tagger
    raise AttributeError(name)
