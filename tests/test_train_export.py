"""Train a tiny network on tiny clips through the real decoder, export it, tag with it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from media import encode_clip

from vidtag import Tagger
from vidtag.errors import BackendUnavailable, ModelError
from vidtag.nets import create_model
from vidtag.runtime.artifact import InputSpec, load_meta
from vidtag.runtime.device import nvdec_available
from vidtag.train.config import TrainConfig
from vidtag.train.evaluate import evaluate_artifact, format_metrics
from vidtag.train.export import export_artifact
from vidtag.train.trainer import MEAN, STD, evaluate_epoch, train


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    rows = []
    for i in range(6):
        p = encode_clip(d / f"c{i}.mp4", width=64, height=96, seconds=2.0, fps=10, gop=10)
        rows.append({"path": p.name, "tags": ["square", "checker", "move_right"]})
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "manifest.jsonl"


def _cfg(manifest: Path, out: Path, epochs: int, **kw: Any) -> TrainConfig:
    kw.setdefault("batch_size", 4)
    return TrainConfig(
        train_manifest=str(manifest),
        val_manifest=None,
        out_dir=str(out),
        arch="x2plus1d_xs",
        frames=4,
        height=32,
        width=32,
        epochs=epochs,
        workers=1,
        progress=False,
        val_fraction=0.34,
        **kw,
    )


def test_train_resume_export_and_tag(tiny_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    best = train(_cfg(tiny_manifest, out, epochs=1))
    assert best.is_file()
    assert len(json.loads((out / "history.json").read_text())) == 1
    train(_cfg(tiny_manifest, out, epochs=2))  # resumes from epoch 1
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]

    art = export_artifact(tmp_path / "models", name="tiny", version="1", checkpoint=best)
    meta = load_meta(art)
    assert meta.input.frames == 4 and meta.input.height == 32 and len(meta.thresholds) == 22
    assert "validation" in meta.metrics and meta.provenance["onnx_parity_max_abs_diff"] < 1e-3
    res = Tagger(art).tag(tiny_manifest.parent / "c0.mp4", top_k=3)
    assert 1 <= len(res.tags) <= 3
    assert res.embedding is not None and res.embedding.shape == (meta.embedding_size,)
    assert abs(float(np.linalg.norm(res.embedding)) - 1.0) < 1e-4
    assert res.all_scores.shape == (22,)
    with pytest.raises(FileExistsError):
        export_artifact(tmp_path / "models", name="tiny", version="1", checkpoint=best)


def test_fill_trained_with_is_the_fill_served(tiny_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "fill"
    best = train(_cfg(tiny_manifest, out, epochs=1, fill=3))
    assert json.loads((out / "cache-train" / "spec.json").read_text())["spec"]["fill"] == 3
    art = export_artifact(tmp_path / "models", name="tiny", version="1", checkpoint=best)
    assert load_meta(art).sampling == {"policy": "fast", "fill": 3}
    assert Tagger(art).spec.fill == 3
    assert Tagger(art, sampling={"fill": 1}).spec.fill == 1
    m = evaluate_artifact(art, tiny_manifest, policy="exact", fill=2, progress=False)
    assert (m["policy"], m["fill"], m["clips"], m["failed"]) == ("exact", 2, 6, [])
    assert "fill 2, pyav decoding" in format_metrics(m)
    # Another decode backend's frames: opencv's; nvdec (the GPU path's) stops at once where
    # it cannot run, rather than failing every clip.
    pytest.importorskip("cv2")
    m = evaluate_artifact(art, tiny_manifest, decode_backend="opencv", progress=False)
    assert (m["decode_backend"], m["clips"], m["failed"]) == ("opencv", 6, [])
    assert "opencv decoding" in format_metrics(m)
    if not nvdec_available():
        with pytest.raises(BackendUnavailable, match="decode backend 'nvdec' needs"):
            evaluate_artifact(art, tiny_manifest, decode_backend="nvdec", progress=False)


def test_time_budget_ends_training_at_the_first_epoch_past_it(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "budget"
    best = train(_cfg(tiny_manifest, out, epochs=50, time_budget_s=1e-3))
    hist = json.loads((out / "history.json").read_text())
    assert best.is_file() and len(hist) == 1
    assert hist[0]["lr"] == pytest.approx(2e-3 * 1e-4)  # the schedule ran to its end


def test_init_warm_starts_from_another_run(tiny_manifest: Path, tmp_path: Path) -> None:
    first = train(_cfg(tiny_manifest, tmp_path / "a", epochs=1))
    warm = train(_cfg(tiny_manifest, tmp_path / "b", epochs=1, init=str(first), lr=1e-9,
                      warmup=0.0, augment="full"))  # fmt: skip
    a, b = (torch.load(p, weights_only=False)["model"] for p in (first, warm))
    weights = [k for k in a if k.endswith("weight")]
    # lr 1e-9: the second run's weights are the first run's, not a fresh initialisation
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in weights)
    fresh = train(_cfg(tiny_manifest, tmp_path / "c", epochs=1, seed=5, lr=1e-9, warmup=0.0))
    c = torch.load(fresh, weights_only=False)["model"]
    assert not all(torch.allclose(a[k], c[k], atol=1e-5) for k in weights)
    # Another loss: the trunk carries over, the head starts fresh.
    other = train(_cfg(tiny_manifest, tmp_path / "d", epochs=1, init=str(first), loss="cnn_rnn",
                       lr=1e-9, warmup=0.0))  # fmt: skip
    d = torch.load(other, weights_only=False)["model"]
    assert all(torch.allclose(a[k], d[k], atol=1e-5) for k in weights)


def test_export_refuses_a_network_onnx_cannot_match(tmp_path: Path) -> None:
    class Drifting(torch.nn.Module):
        """Eager output depends on a Python-side counter that the ONNX trace freezes."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = create_model("x2plus1d_xs", num_classes=22)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            self.calls += 1
            logits, emb = self.inner(x)
            return logits + float(self.calls), emb

    spec = InputSpec(4, 32, 32, MEAN, STD)
    with pytest.raises(ModelError, match="disagrees"):
        export_artifact(
            tmp_path, name="bad", version="1", model=Drifting(), arch="drift", input_spec=spec
        )
    assert not (tmp_path / "bad" / "1").exists()


def test_accumulation_epoch_snapshots_and_eval_epoch(tiny_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "acc"
    # Jaccard calibration: --eval-epoch recomputes the same rule from the saved config.
    train(_cfg(tiny_manifest, out, epochs=2, batch_size=2, accumulate=2, calibrate="jaccard"))
    hist = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in hist] == [1, 2]  # 4 clips / batch 2 = 2 micro-batches = 1 step
    assert sorted(p.name for p in (out / "epochs").iterdir()) == ["epoch-001.pt", "epoch-002.pt"]
    again = evaluate_epoch(out, 2)
    assert again["mean_jaccard"] == pytest.approx(hist[1]["val_mean_jaccard"])
    with pytest.raises(FileNotFoundError, match="epoch-009"):
        evaluate_epoch(out, 9)
    with pytest.raises(ValueError, match="calibrate"):
        _cfg(tiny_manifest, out, epochs=1, calibrate="mAP")
    pytest.importorskip("matplotlib")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torchrun_two_cpu_processes(tiny_manifest: Path, tmp_path: Path) -> None:
    """DDP over gloo: two ranks, one history (rank 0), every epoch run by both."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--standalone", "-m", "vidtag.cli", "train",
        "--manifest", str(tiny_manifest), "--out", str(out), "--arch", "x2plus1d_xs",
        "--frames", "4", "--height", "32", "--width", "32", "--epochs", "2",
        "--batch-size", "1", "--workers", "1", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and {h["world_size"] for h in hist} == {2}
    # 5 train clips (1 held out), batch 1 per rank, 2 ranks: 2 steps per epoch, not 5
    assert [h["step"] for h in hist] == [2, 4]
    assert (out / "best.pt").is_file()


@pytest.mark.parametrize("head", ["bce", "warp", "lsep", "c2ae", "cnn_rnn", "scnn_rnn", "ria"])
def test_every_head_trains_and_only_threshold_heads_export(
    tiny_manifest: Path, tmp_path: Path, head: str
) -> None:
    out = tmp_path / head
    best = train(_cfg(tiny_manifest, out, epochs=1, loss=head))
    state = torch.load(best, weights_only=False)
    assert state["head_name"] == head and state["head"]
    hist = json.loads((out / "history.json").read_text())
    assert np.isfinite(hist[0]["train_loss"]) and 0 <= hist[0]["val_mAP"] <= 1
    assert evaluate_epoch(out, 1)["mean_jaccard"] == pytest.approx(hist[0]["val_mean_jaccard"])
    if state["head_exportable"]:
        assert export_artifact(tmp_path / "models", name=head, version="1", checkpoint=best)
    else:
        with pytest.raises(ModelError, match="own modules"):
            export_artifact(tmp_path / "models", name=head, version="1", checkpoint=best)


def test_train_list_prints_networks_and_heads(capsys: pytest.CaptureFixture[str]) -> None:
    from vidtag.cli import main

    assert main(["train", "--list"]) == 0
    names = capsys.readouterr().out.split()
    for name in ("x2plus1d_s", "r2plus1d_18", "r2plus1d_34", "mfnet3d", "eco_lite", "eco_full"):
        assert name in names
    for name in ("bce", "warp", "lsep", "c2ae", "cnn_rnn", "scnn_rnn", "ria"):
        assert name in names


def test_multi_gpu_runs_normalise_over_the_global_batch() -> None:
    """torchrun on CUDA: every BatchNorm becomes a SyncBatchNorm with the same state-dict keys
    (checkpoints and the export see plain BatchNorm); one rank, or gloo on CPU, keeps BN."""
    import torch

    from vidtag.nets.registry import create_model
    from vidtag.train.trainer import sync_batchnorm

    net = create_model("x2plus1d_xs", num_classes=5)
    keys = list(net.state_dict())
    bns = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert bns > 0
    for device, world in ((torch.device("cpu"), 2), (torch.device("cuda"), 1)):
        same = sync_batchnorm(net, device, world)
        assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in same.modules())
    synced = sync_batchnorm(net, torch.device("cuda", 1), 2)
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == bns
    assert list(synced.state_dict()) == keys
