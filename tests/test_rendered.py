"""Rendered (never encoded) STB-1 training clips: what they show, their order, their use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from media import encode_clip

from vidtag.decode import DecodedClip, SamplingSpec, sample_frames
from vidtag.nets import create_model
from vidtag.runtime.artifact import load_meta
from vidtag.synth.generate import clip_spec, make_clip
from vidtag.synth.render import Renderer
from vidtag.train.config import TrainConfig
from vidtag.train.export import export_artifact
from vidtag.train.masks import OBJECTS
from vidtag.train.rendered import (
    JITTER,
    RenderedStream,
    render_clip,
    render_frames,
    sample_times,
)
from vidtag.train.trainer import train

# A short small clip keeps the encode cheap (overrides as `vidtag synth` takes them).
SMALL = {
    "duration": 3.0, "size": (96, 160), "fps": 25, "gop": "1s", "codec": "h264",
    "audio": False, "vfr": False,
}  # fmt: skip


def test_a_rendered_clip_is_deterministic_and_carries_its_tags() -> None:
    a, tags, _ = render_clip((5, 3, 4, 32, 24, None))
    b, _, _ = render_clip((5, 3, 4, 32, 24, None))
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
        first, tags1, _ = stream.take(2)
        second, _, _ = stream.take(1)
        assert stream.rendered == 3
    for got, index in ((first[0], 1), (first[1], 3), (second[0], 5)):
        np.testing.assert_array_equal(got, render_clip((9, index, 2, 16, 12, None))[0])
    assert tags1[1] == clip_spec("train", 9, 3, None).tags


def _manifest(folder: Path, tags: list[str]) -> Path:
    """Four tiny encoded clips, all labelled `tags`."""
    rows = []
    for i in range(4):
        p = encode_clip(folder / f"c{i}.mp4", width=48, height=64, seconds=1.0, fps=8, gop=8)
        rows.append({"path": p.name, "tags": tags})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_training_mixes_fresh_rendered_clips_into_every_epoch(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, ["circle", "plain", "blink"])
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


@pytest.mark.parametrize("workers", [0, 1])
def test_masks_come_with_the_clips_and_cover_only_their_objects(workers: int) -> None:
    with RenderedStream(9, 3, 32, 24, workers=workers, grid=(6, 8)) as stream:
        clips, tags, masks = stream.take(4)
    assert masks is not None and masks.shape == (4, 3, len(OBJECTS), 8, 6)
    assert masks.dtype == np.uint8 and clips.shape == (4, 3, 32, 24, 3)
    for m, t in zip(masks, tags, strict=True):
        drawn = {OBJECTS[k] for k in range(len(OBJECTS)) if m[:, k].any()}
        assert drawn and drawn <= set(t)  # blinking ones may be hidden in every sampled frame
    with RenderedStream(9, 3, 32, 24, workers=0) as plain:
        assert plain.take(1)[2] is None


def _tiny_aux_run(manifest: Path, arch: str) -> dict[str, Any]:
    """TrainConfig fields of one epoch on `manifest` plus two rendered clips with masks."""
    return dict(
        train_manifest=str(manifest), val_manifest=None, arch=arch, frames=2,
        height=30, width=22, epochs=1, batch_size=2, workers=1, progress=False,
        val_fraction=0.25, render_per_epoch=2, render_workers=0, aux_masks=1.0,
    )  # fmt: skip


def test_the_object_map_head_trains_on_rendered_clips_and_stays_out_of_the_artifact(
    tmp_path: Path,
) -> None:
    manifest = _manifest(tmp_path, ["star", "grid", "rotate"])
    kw = _tiny_aux_run(manifest, "x2plus1d_xs")
    best = train(TrainConfig(out_dir=str(tmp_path / "run"), **kw))  # type: ignore[arg-type]
    state = torch.load(best, weights_only=False)
    assert any("aux_head." in k for k in state["model"])
    art = export_artifact(tmp_path / "models", name="aux", version="1", checkpoint=best)
    assert load_meta(art).provenance["onnx_parity_max_abs_diff"] < 1e-3
    with pytest.raises(ValueError, match="object-map head"):
        train(TrainConfig(out_dir=str(tmp_path / "r2"), **{**kw, "arch": "mfnet3d"}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aux_masks"):
        TrainConfig(train_manifest="m", val_manifest=None, out_dir="o", aux_masks=-1.0)


def test_forward_aux_adds_maps_and_keeps_the_served_outputs() -> None:
    for arch in ("x2plus1d_s", "x2plus1d_m"):
        net = create_model(arch, num_classes=22, aux=len(OBJECTS)).eval()
        x = torch.randn(2, 3, 4, 64, 48)
        logits, emb, maps = net.forward_aux(x)
        served = net(x)
        assert maps.shape == (2, len(OBJECTS), 4, 16, 12)
        assert torch.allclose(logits, served[0], atol=1e-5) and torch.allclose(emb, served[1])
    with pytest.raises(ValueError, match="aux"):
        create_model("x2plus1d_xs", num_classes=22).forward_aux(x)


def test_the_object_branch_scores_the_object_kinds_with_its_maps_maximum() -> None:
    net = create_model("x2plus1d_o", num_classes=22).eval()
    x = torch.randn(2, 3, 4, 64, 48)
    logits, emb, maps = net.forward_aux(x)
    assert maps.shape == (2, len(OBJECTS), 4, 8, 6) and net.aux_stride == 8
    assert torch.equal(logits[:, : len(OBJECTS)], maps.amax(dim=(2, 3, 4)))
    served = net(x)
    assert torch.equal(served[0], logits) and torch.equal(served[1], emb)
    with pytest.raises(ValueError, match="objects"):
        create_model("x2plus1d_o", num_classes=22, aux=3)


def test_the_object_branch_trains_on_masks_and_is_served(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, ["ring", "plain", "zoom_in"])
    kw = _tiny_aux_run(manifest, "x2plus1d_o")
    best = train(TrainConfig(out_dir=str(tmp_path / "run"), **kw))  # type: ignore[arg-type]
    state = torch.load(best, weights_only=False)
    assert any(k.startswith("objects.") for k in state["model"])
    art = export_artifact(tmp_path / "models", name="obj", version="1", checkpoint=best)
    assert load_meta(art).provenance["onnx_parity_max_abs_diff"] < 1e-3


def test_the_track_head_adds_the_object_maps_course_to_the_other_classes() -> None:
    torch.manual_seed(0)
    net = create_model("x2plus1d_ot", num_classes=22).eval()
    x = torch.randn(2, 3, 4, 64, 48)
    with torch.no_grad():
        logits, emb, maps = net.forward_aux(x)
        base = net.classifier(emb)  # eval: dropout is the identity
        assert torch.equal(logits[:, : len(OBJECTS)], maps.amax(dim=(2, 3, 4)))
        assert torch.allclose(logits[:, len(OBJECTS) :], base + net.tracks(maps), atol=1e-6)
        assert not torch.allclose(logits[:, len(OBJECTS) :], base, atol=1e-3)
    with pytest.raises(ValueError, match="tracks"):
        create_model("x2plus1d_s", num_classes=22, tracks=True)


def test_init_extends_a_trained_network_with_fresh_modules(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, ["ring", "plain", "zoom_in"])
    kw = _tiny_aux_run(manifest, "x2plus1d_o")
    first = train(TrainConfig(out_dir=str(tmp_path / "o"), **kw))  # type: ignore[arg-type]
    kw = {**kw, "arch": "x2plus1d_ot", "init": str(first), "lr": 1e-9}
    second = train(TrainConfig(out_dir=str(tmp_path / "ot"), **kw))  # type: ignore[arg-type]
    a, b = (torch.load(p, weights_only=False)["model"] for p in (first, second))
    assert any(k.startswith("tracks.") for k in b) and not any(k.startswith("tracks.") for k in a)
    w = "objects.maps.0.weight"
    assert torch.allclose(a[w], b[w], atol=1e-5)  # carried over (lr ~0: barely moved)
    back = {**kw, "arch": "x2plus1d_s", "init": str(second)}  # _s does not extend _ot
    with pytest.raises(ValueError, match="does not extend"):
        train(TrainConfig(out_dir=str(tmp_path / "s"), **back))  # type: ignore[arg-type]
