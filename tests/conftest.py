from __future__ import annotations

from pathlib import Path

import pytest
from media import encode_clip


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def h264_clip(clip_dir: Path) -> Path:
    """4 s, 25 fps, keyframe every second, B-frames."""
    return encode_clip(clip_dir / "h264.mp4")


@pytest.fixture(scope="session")
def single_key_clip(clip_dir: Path) -> Path:
    """4 s with one keyframe for the whole clip."""
    return encode_clip(clip_dir / "onekey.mp4", gop=None)
