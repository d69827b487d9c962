"""MF-Net 3D and ECO: shapes, published sizes, frame-order sensitivity, ONNX parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from vidtag.nets import create_model, list_models
from vidtag.nets.eco import ECO
from vidtag.nets.mfnet import MFNet3D
from vidtag.runtime.artifact import InputSpec, load_meta
from vidtag.train.export import export_artifact

# (arch, slim builder kwargs, embedding size of the slim network)
SLIM: list[tuple[str, dict[str, Any], int]] = [
    ("mfnet3d", {"width": 0.25, "num_fibers": 4}, 192),
    ("eco_lite", {"width": 0.25}, 128),
    ("eco_full", {"width": 0.25}, 256 + 128),
]
IDS = [a for a, _, _ in SLIM]


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _slim(arch: str, kw: dict[str, Any], classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return create_model(arch, num_classes=classes, **kw).eval()


def test_builders_are_registered() -> None:
    assert {"mfnet3d", "eco_lite", "eco_full"} <= set(list_models())


@pytest.mark.parametrize(("arch", "kw", "emb"), SLIM, ids=IDS)
def test_shapes_and_embedding_size(arch: str, kw: dict[str, Any], emb: int) -> None:
    net = _slim(arch, kw)
    with torch.no_grad():
        logits, e = net(torch.randn(2, 3, 4, 64, 64))
    assert logits.shape == (2, 5) and e.shape == (2, emb) and net.embedding_size == emb


@pytest.mark.parametrize("full", [False, True], ids=["lite", "full"])
def test_eco_takes_any_segment_count_and_odd_sizes(full: bool) -> None:
    net = ECO(3, full=full, width=0.25).eval()
    with torch.no_grad():
        for t, s in ((1, 32), (3, 72), (6, 40)):  # 72 -> 9x9 maps: odd-size reduction modules
            logits, e = net(torch.randn(2, 3, t, s, s))
            assert logits.shape == (2, 3) and e.shape == (2, net.embedding_size)


def test_mfnet_embedding_projection_and_channel_checks() -> None:
    net = MFNet3D(4, channels=(8, 16, 32, 64, 128), num_fibers=8, embedding=32).eval()
    with torch.no_grad():
        _, e = net(torch.randn(1, 3, 4, 32, 32))
    assert e.shape == (1, 32) and net.embedding_size == 32
    with pytest.raises(ValueError, match="multiple of 16"):
        MFNet3D(4, channels=(8, 16, 32, 64, 128))


def test_full_size_parameter_counts() -> None:
    """MF-Net 3D 8.0M (authors' README, Kinetics-400); ECO-Full 47.5M (ECO 16F as tabled in the
    TSM paper). ECO-Lite has no verified published count: its 3D part is checked against the
    Caffe layer table instead (3x3x3 convs 96>128, 2x128, 128>256 + 3x3x3 projection, 3x256,
    256>512 + projection, 3x512)."""
    mf = MFNet3D(400)
    assert _params(mf) == pytest.approx(8.0e6, rel=0.01)
    assert mf.embedding_size == 768
    full, lite = ECO(400, full=True), ECO(400)
    assert _params(full) == pytest.approx(47.5e6, rel=0.01)
    assert (full.embedding_size, lite.embedding_size) == (1536, 512)
    conv3d = sum(m.weight.numel() for m in lite.net3d.modules() if isinstance(m, nn.Conv3d))
    pairs = [(96, 128), (128, 128), (128, 128), (128, 256), (256, 256), (128, 256)]
    pairs += [(256, 256), (256, 256), (256, 512), (512, 512), (256, 512), (512, 512), (512, 512)]
    assert conv3d == 27 * sum(a * b for a, b in pairs)
    assert _params(lite) == _params(full) - _params(full.net2d) - 1024 * 400


@pytest.mark.parametrize(("arch", "kw", "emb"), SLIM, ids=IDS)
def test_output_depends_on_frame_order(arch: str, kw: dict[str, Any], emb: int) -> None:
    net = _slim(arch, kw)
    x = torch.randn(1, 3, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (a, ea), (b, eb) = net(x), net(x.flip(2))
    assert not torch.allclose(a, b, atol=1e-5)
    if arch == "eco_full":  # the per-frame 2D branch is averaged over time: order-blind by design
        n2d = emb - 128
        torch.testing.assert_close(ea[:, :n2d], eb[:, :n2d], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(ea[:, n2d:], eb[:, n2d:], atol=1e-5)


@pytest.mark.parametrize(("arch", "kw", "emb"), SLIM, ids=IDS)
def test_onnx_export_matches_eager(arch: str, kw: dict[str, Any], emb: int, tmp_path: Path) -> None:
    net = _slim(arch, kw, classes=22)
    spec = InputSpec(frames=4, height=64, width=64, mean=(0.45,) * 3, std=(0.25,) * 3)
    art = export_artifact(tmp_path, name=arch, version="1", model=net, arch=arch, input_spec=spec)
    meta = load_meta(art)
    assert meta.embedding_size == emb
    assert meta.provenance["onnx_parity_max_abs_diff"] < 1e-3
