"""Rendered (never encoded) STB-1 training clips: what they show, their order, their use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from media import encode_clip

from vidtag.decode import DecodedClip, SamplingSpec, sample_frames
from vidtag.synth.generate import clip_spec, make_clip
from vidtag.synth.render import Renderer
from vidtag.train.config import TrainConfig
from vidtag.train.rendered import JITTER, RenderedStream, render_clip, render_frames, sample_times
from vidtag.train.trainer import train

# A short small clip keeps the encode cheap (overrides as `vidtag synth` takes them).
SMALL = {
    "duration": 3.0, "size": (96, 160), "fps": 25, "gop": "1s", "codec": "h264",
    "audio": False, "vfr": False,
}  # fmt: skip


def test_a_rendered_clip_is_deterministic_and_carries_its_tags() -> None:
    a, tags = render_clip((5, 3, 4, 32, 24))
    b, _ = render_clip((5, 3, 4, 32, 24))
    assert a.shape == (4, 32, 24, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert tags == clip_spec("train", 5, 3, None).tags and a.std() > 5


def test_sample_times_stay_in_their_segments() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        t = sample_times(12.0, 8, rng)
        centres = (np.arange(8) + 0.5) * 1.5
        assert np.all(np.diff(t) >= 0) and np.all(np.abs(t - centres) <= JITTER * 1.5 + 1e-9)


def test_rendered_frames_are_what_the_decoder_returns_for_the_encoded_clip(
    tmp_path: Path,
) -> None:
    """Rendering at the timestamps the sampler returned gives the frames the serving decoder
    returns for the encoded clip, up to compression: the domain gap is the codec's only."""
    over = [{**SMALL, "rotation": 0}, {**SMALL, "rotation": 90}]
    rows = [make_clip((str(tmp_path), "train", 3, i, over[i])) for i in (0, 1)]
    spec = SamplingSpec(frames=4, height=64, width=48)
    decoded = [sample_frames(tmp_path / row["path"], spec) for row in rows]

    def diff(index: int, clip: DecodedClip) -> float:
        renderer = Renderer(clip_spec("train", 3, index, over[index]))
        mine = render_frames(renderer, np.asarray(clip.timestamps), spec.height, spec.width)
        return float(np.abs(mine.astype(int) - clip.frames.astype(int)).mean())

    for i, clip in enumerate(decoded):
        same, other = diff(i, clip), diff(1 - i, clip)
        assert same < 16 and same < 0.5 * other, (i, same, other)


@pytest.mark.parametrize("workers", [0, 1])
def test_the_stream_renders_its_indices_in_order(workers: int) -> None:
    with RenderedStream(9, 2, 16, 12, workers=workers, start=1, step=2, ahead=3) as stream:
        first, tags1 = stream.take(2)
        second, _ = stream.take(1)
        assert stream.rendered == 3
    for got, index in ((first[0], 1), (first[1], 3), (second[0], 5)):
        np.testing.assert_array_equal(got, render_clip((9, index, 2, 16, 12))[0])
    assert tags1[1] == clip_spec("train", 9, 3, None).tags


def test_training_mixes_fresh_rendered_clips_into_every_epoch(tmp_path: Path) -> None:
    rows = []
    for i in range(4):
        p = encode_clip(tmp_path / f"c{i}.mp4", width=48, height=64, seconds=1.0, fps=8, gop=8)
        rows.append({"path": p.name, "tags": ["circle", "plain", "blink"]})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(
        train_manifest=str(manifest), val_manifest=None, out_dir=str(tmp_path / "run"),
        arch="x2plus1d_xs", frames=2, height=32, width=24, epochs=2, batch_size=2, workers=1,
        progress=False, val_fraction=0.25, render_per_epoch=3, render_workers=0,
    )  # fmt: skip
    train(cfg)
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    # 3 clips a epoch round up to 2 batches of 2; none is reused across epochs
    assert [h["rendered"] for h in hist] == [4, 8]
    with pytest.raises(ValueError, match="render_per_epoch"):
        TrainConfig(train_manifest="m", val_manifest=None, out_dir="o", render_per_epoch=-1)
