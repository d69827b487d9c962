"""Object masks of cached STB-1 clips: from the generator, at the decoder's timestamps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vidtag.decode import SamplingSpec, sample_frames
from vidtag.synth.generate import make_clip
from vidtag.train.cache import build_cache
from vidtag.train.config import TrainConfig
from vidtag.train.masks import OBJECTS, cache_masks, synth_spec
from vidtag.train.trainer import train

SMALL = {
    "duration": 2.0, "size": (96, 160), "fps": 25, "gop": "1s", "codec": "h264",
    "audio": False, "vfr": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def stb1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A four-clip STB-1 train manifest (one clip rotated), synthesised with overrides."""
    folder = tmp_path_factory.mktemp("stb1")
    rows = [
        make_clip((str(folder), "train", 7, i, {**SMALL, "rotation": 90 * (i == 1)}))
        for i in range(4)
    ]
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_cached_clips_get_their_objects_masks_at_the_returned_times(
    stb1: Path, tmp_path: Path
) -> None:
    spec = SamplingSpec(frames=4, height=80, width=48)
    cache = build_cache(stb1, tmp_path / "cache", spec, workers=1, progress=False)
    rows = [json.loads(line) for line in stb1.read_text().splitlines()]
    times = np.load(cache / "times.npy")
    for row, t in zip(rows, times, strict=True):
        got = sample_frames(stb1.parent / row["path"], spec).timestamps
        np.testing.assert_allclose(t, got)
    masks = cache_masks(cache, stb1, (6, 10))
    assert masks.shape == (4, 4, len(OBJECTS), 10, 6) and masks.dtype == np.uint8
    for row, m in zip(rows, masks, strict=True):
        seen = {k for j, k in enumerate(OBJECTS) if m[:, j].any()}
        assert seen == set(row["tags"]) & set(OBJECTS)  # every tagged kind, nothing else
        # an object covers 10-25 % of the short side: a few cells, never most of the frame
        assert 0 < (m.max(axis=1) > 0).mean() < 0.5
    # kept beside the frames and reused
    assert (cache / "masks-6x10.npy").is_file()
    assert isinstance(cache_masks(cache, stb1, (6, 10)), np.memmap)
    # a rebuilt cache (another sampling) drops masks computed for the frames it replaces
    build_cache(stb1, cache, SamplingSpec(frames=3, height=80, width=48), workers=1, progress=False)
    assert not (cache / "masks-6x10.npy").exists()
    assert cache_masks(cache, stb1, (6, 10)).shape[1] == 3


def test_rows_the_generator_cannot_make_again_are_refused(stb1: Path) -> None:
    row = json.loads(stb1.read_text().splitlines()[0])
    assert synth_spec(row).tags == tuple(row["tags"])
    forced = {**row, "tags": [*row["tags"], "shake"]}
    with pytest.raises(ValueError, match="now makes"):
        synth_spec(forced)
    with pytest.raises(ValueError, match="not an STB-1 manifest row"):
        synth_spec({"path": "a.mp4", "tags": ["circle"]})


def test_the_object_branch_trains_on_the_cached_clips_masks(stb1: Path, tmp_path: Path) -> None:
    kw = dict(
        train_manifest=str(stb1), val_manifest=None, arch="x2plus1d_o", frames=2,
        height=40, width=24, epochs=1, batch_size=2, workers=1, progress=False,
        val_fraction=0.25, aux_masks=1.0, augment="full",
    )  # fmt: skip
    best = train(TrainConfig(out_dir=str(tmp_path / "run"), **kw))  # type: ignore[arg-type]
    assert (tmp_path / "run" / "cache-train" / "masks-3x5.npy").is_file()
    assert any(k.startswith("objects.") for k in torch.load(best, weights_only=False)["model"])
    # a manifest of clips the generator did not make: no masks, and no rendering to bring any
    plain = tmp_path / "plain.jsonl"
    rows = [{**json.loads(line), "seed": 99} for line in stb1.read_text().splitlines()]
    plain.write_text(
        "".join(json.dumps({**r, "path": str(stb1.parent / r["path"])}) + "\n" for r in rows)
    )
    with pytest.raises(ValueError, match="no masks for the cached clips"):
        train(TrainConfig(out_dir=str(tmp_path / "r2"), **{**kw, "train_manifest": str(plain)}))  # type: ignore[arg-type]
