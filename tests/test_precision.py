"""Channels-last conversion keeps every network's function; bf16 is on only where native, and
never where it gives NaN gradients; a NaN loss stops training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from media import encode_clip

from vidtag.nets import create_model
from vidtag.train import trainer
from vidtag.train.config import TrainConfig
from vidtag.train.precision import (
    bf16_native,
    channels_last_input,
    fp32_short_conv3d,
    to_channels_last,
)


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    for i in range(3):
        encode_clip(d / f"c{i}.mp4", width=64, height=96, seconds=1.0, fps=10, gop=10)
    rows = [{"path": f"c{i}.mp4", "tags": ["square", "move_right"]} for i in range(3)]
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "manifest.jsonl"


@pytest.mark.parametrize("arch", ["eco_lite", "mfnet3d", "x2plus1d_s"])
def test_channels_last_network_computes_the_same(arch: str) -> None:
    torch.manual_seed(0)
    net = create_model(arch, num_classes=5).eval()
    x = torch.randn(2, 3, 8, 64, 48)
    with torch.no_grad():
        want = net(x)[0]
        to_channels_last(net)
        got = net(channels_last_input(x))[0]
    convs = [p for p in net.parameters() if p.dim() in (4, 5)]
    assert convs
    for p in convs:
        fmt = torch.channels_last_3d if p.dim() == 5 else torch.channels_last
        assert p.is_contiguous(memory_format=fmt)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_channels_last_weights_load_into_a_plain_network() -> None:
    torch.manual_seed(0)
    fast = to_channels_last(create_model("eco_lite", num_classes=5)).eval()
    plain = create_model("eco_lite", num_classes=5).eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(1, 3, 8, 64, 48)
    with torch.no_grad():
        assert torch.allclose(plain(x)[0], fast(x)[0], atol=1e-4, rtol=1e-4)


def test_bf16_native_follows_the_hardware() -> None:
    cpu = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert bf16_native(torch.device("cpu")) == (cpu and torch.backends.mkldnn.is_available())
    assert bf16_native(torch.device("cuda"))
    assert not bf16_native(torch.device("meta"))


def test_short_inputs_leave_autocast_and_train_finite() -> None:
    torch.manual_seed(0)
    conv = fp32_short_conv3d(
        torch.nn.Sequential(torch.nn.Conv3d(16, 16, (3, 1, 1), padding=(1, 0, 0)))
    )
    for t, want in ((2, torch.float32), (8, torch.bfloat16)):
        x = torch.randn(2, 16, t, 8, 6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(x).dtype == want
    # T=2 under a 3-tap kernel: oneDNN's bf16 weight gradient was NaN in 39 of 40 such steps
    for _ in range(10):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(torch.randn(2, 16, 2, 8, 6))
        y.float().pow(2).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


def test_a_non_finite_loss_stops_training(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer._Objective, "forward", lambda *a, **k: torch.tensor(float("nan")))
    cfg = TrainConfig(
        train_manifest=str(tiny_manifest), val_manifest=None, out_dir=str(tmp_path / "run"),
        arch="x2plus1d_xs", frames=2, height=32, width=32, epochs=1, batch_size=2, workers=1,
        progress=False, val_fraction=0.34,
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match="non-finite loss nan at step 0 of epoch 1"):
        trainer.train(cfg)
    assert not (tmp_path / "run" / "best.pt").exists()
