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


@pytest.fixture(scope="session")
def clip_bytes(h264_clip: Path) -> bytes:
    """The 4 s H.264 clip as bytes (what a backend sends)."""
    return h264_clip.read_bytes()


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository `<repo>/tiny/1` holding an untrained tiny model, exported the way training
    exports (ONNX + model.json, parity-checked)."""
    import torch

    from vidtag.nets import create_model
    from vidtag.tags import TAGS
    from vidtag.train.export import export_artifact

    torch.manual_seed(0)
    repo = tmp_path_factory.mktemp("models")
    net = create_model("x2plus1d_xs", num_classes=len(TAGS))
    export_artifact(repo, name="tiny", version="1", model=net, arch="x2plus1d_xs")
    return repo
