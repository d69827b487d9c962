"""The integration suite: real external tools (Prometheus, promtool, grpcurl, kubernetes-validate,
check-jsonschema) against a real server and the shipped deployment files.

Every module here marks its tests `integration` (`make test-integration` installs the tools and
runs them; the default `make test` leaves them out). A test skips, naming the tool, only when
that tool is not installed (integration_tools.find_tool)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_tools import ROOT
from media import encode_clip

from vidtag.server.app import VidtagServer
from vidtag.server.background import running_server
from vidtag.server.config import ServeConfig


@pytest.fixture(scope="session")
def served() -> Iterator[VidtagServer]:
    """`vidtag serve` on the bundled models (default model stb1), gRPC and /metrics on free
    ports of 127.0.0.1, decode worker processes as in production."""
    config = ServeConfig(
        host="127.0.0.1",
        port=0,
        model_repository=ROOT / "models",
        metrics_port=0,
        metrics_host="127.0.0.1",
        repository_poll_s=0,
    )
    with running_server(config) as (server, _):
        yield server


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s H.264 clip (a square moving right over stripes)."""
    return encode_clip(tmp_path_factory.mktemp("integration") / "clip.mp4", seconds=2.0)
