"""Checkpoint -> model artifact (ONNX + model.json), refused unless ONNX Runtime matches eager."""

from __future__ import annotations

import datetime as dt
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vidtag
from vidtag.errors import ModelError
from vidtag.nets import create_model
from vidtag.runtime.artifact import ArtifactMeta, InputSpec, load_meta
from vidtag.runtime.onnx_backend import OnnxBackend
from vidtag.tags import TAG_GROUPS, TAGS
from vidtag.train.trainer import MEAN, STD

NETWORK_FILE = "model.onnx"


class _Export(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, emb = self.net(x)
        return logits, emb


def _onnx_export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        _Export(model).eval(),
        (example,),
        str(path),
        input_names=["frames"],
        output_names=["logits", "embedding"],
        dynamic_axes={"frames": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def check_parity(model: torch.nn.Module, onnx_path: Path, ispec: InputSpec, atol: float) -> float:
    """Max |ORT - eager| over both outputs at batch 1 and 3; ModelError above atol."""
    gen = torch.Generator().manual_seed(0)
    backend = OnnxBackend(onnx_path, threads=1)
    worst = 0.0
    model.eval()
    for n in (1, 3):
        x = torch.randn(n, 3, ispec.frames, ispec.height, ispec.width, generator=gen)
        with torch.no_grad():
            ref = [t.numpy() for t in model(x)]
        got = backend(x.numpy())
        worst = max(worst, *(float(np.max(np.abs(a - b))) for a, b in zip(ref, got, strict=True)))
    if worst > atol:
        raise ModelError(
            f"ONNX Runtime disagrees with eager PyTorch: max |diff| {worst:.2e} > {atol}"
        )
    return worst


def export_artifact(
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    checkpoint: str | Path | None = None,
    arch: str | None = None,
    model: torch.nn.Module | None = None,
    input_spec: InputSpec | None = None,
    thresholds: list[float] | None = None,
    group_limits: dict[str, tuple[int, int]] | None = None,
    metrics: dict[str, Any] | None = None,
    sampling: dict[str, Any] | None = None,
    atol: float = 1e-3,
) -> Path:
    """Write `<out_dir>/<name>/<version>/`. From a checkpoint (trainer's best.pt) or a module."""
    extra: dict[str, Any] = {}
    if checkpoint is not None:
        state = torch.load(checkpoint, weights_only=False)
        if not state.get("head_exportable", True):
            raise ModelError(
                f"head {state.get('head_name')!r} decides with its own modules (a decoder or "
                "estimator on the embedding); the artifact format holds the network and "
                "per-tag thresholds only, so export a bce, warp or lsep run"
            )
        cfg = state["config"]
        arch = state["arch"]
        model = create_model(arch, num_classes=len(state["tags"]))
        # The object-map head of --aux-masks runs only in training: not part of the artifact.
        model.load_state_dict({k: v for k, v in state["model"].items() if "aux_head." not in k})
        input_spec = input_spec or InputSpec(cfg["frames"], cfg["height"], cfg["width"], MEAN, STD)
        thresholds = thresholds or state["thresholds"]
        group_limits = group_limits or state.get("group_limits")
        metrics = {"validation": state["val_metrics"], **(metrics or {})}
        sampling = sampling or {"policy": cfg["policy"], "fill": cfg.get("fill", 1)}
        extra = {
            "checkpoint_epoch": state["epoch"],
            "train_config": cfg,
            "head": state.get("head_name", "bce"),
        }
    if model is None or arch is None:
        raise ValueError("give a checkpoint, or a model together with its arch name")
    ispec = input_spec or InputSpec(8, 160, 96, MEAN, STD)
    final = Path(out_dir) / name / version
    if final.exists():
        raise FileExistsError(f"{final} exists; artifacts are immutable, pick a new version")
    model.eval()
    with tempfile.TemporaryDirectory(
        dir=Path(out_dir).parent if Path(out_dir).exists() else None
    ) as tmp:
        stage = Path(tmp) / version
        stage.mkdir()
        example = torch.zeros(1, 3, ispec.frames, ispec.height, ispec.width)
        _onnx_export(model, example, stage / NETWORK_FILE)
        diff = check_parity(model, stage / NETWORK_FILE, ispec, atol)
        with torch.no_grad():
            emb_size = int(model(example)[1].shape[1])
        meta = ArtifactMeta(
            name=name,
            version=version,
            network_file=NETWORK_FILE,
            arch=arch,
            input=ispec,
            sampling=sampling or {"policy": "fast"},
            tags=TAGS,
            groups=dict(TAG_GROUPS),
            thresholds=tuple(float(t) for t in (thresholds or [0.5] * len(TAGS))),
            group_limits={g: (int(a), int(b)) for g, (a, b) in (group_limits or {}).items()},
            embedding_size=emb_size,
            provenance={
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "vidtag": vidtag.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "onnx_parity_max_abs_diff": diff,
                **extra,
            },
            metrics=metrics or {},
        )
        meta.save(stage)
        load_meta(stage)  # the artifact must load before it is published
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), str(final))
    return final
