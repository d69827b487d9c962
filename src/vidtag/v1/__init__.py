"""Generated gRPC stubs for the vidtag.v1 wire API (proto/vidtag/v1/tagger.proto).

The `tagger_pb2*` modules are generated at build time and never committed; when they are missing,
importing this package fails with an ImportError that says how to generate them.
"""

from __future__ import annotations

import importlib.util

_HINT = (
    "vidtag's gRPC stubs (vidtag.v1.tagger_pb2*) are not generated: run `make proto`, i.e. "
    "`python -m grpc_tools.protoc -Iproto --python_out=src --pyi_out=src --grpc_python_out=src "
    "proto/vidtag/v1/tagger.proto` from the repository root"
)

try:
    from vidtag.v1 import tagger_pb2, tagger_pb2_grpc
except ImportError as exc:  # only a missing stub gets the hint, not e.g. a missing grpc
    if any(
        importlib.util.find_spec(f"vidtag.v1.{mod}") is None
        for mod in ("tagger_pb2", "tagger_pb2_grpc")
    ):
        raise ImportError(_HINT) from exc
    raise

__all__ = ["tagger_pb2", "tagger_pb2_grpc"]
