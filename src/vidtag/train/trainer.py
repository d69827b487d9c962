"""Single-process trainer: frame cache -> batched augmentation and normalisation -> network + loss.

Runs on CPU or one GPU (frames copied to the GPU once, bf16 autocast); with a time budget the
learning-rate schedule follows wall time, so a fixed device lease gets a complete schedule.

Writes `<out>/checkpoint.pt` every epoch (resumable) and `<out>/best.pt` with the calibrated
thresholds and validation metrics of the best epoch (by mean Jaccard).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vidtag.decode import SamplingSpec
from vidtag.heads import create_loss
from vidtag.nets import create_model
from vidtag.runtime.artifact import InputSpec
from vidtag.runtime.decision import DecisionRule, observed_group_limits
from vidtag.tags import TAG_GROUPS, TAGS
from vidtag.train.augment import BatchAugmenter, normalise
from vidtag.train.cache import build_cache
from vidtag.train.config import TrainConfig
from vidtag.train.manifest import Clip, multi_hot
from vidtag.train.metrics import calibrate_thresholds, evaluate_predictions

MEAN = (0.45, 0.45, 0.45)
STD = (0.25, 0.25, 0.25)


def input_spec(cfg: TrainConfig) -> InputSpec:
    return InputSpec(frames=cfg.frames, height=cfg.height, width=cfg.width, mean=MEAN, std=STD)


def sampling_spec(cfg: TrainConfig) -> SamplingSpec:
    return SamplingSpec(frames=cfg.frames, height=cfg.height, width=cfg.width, policy=cfg.policy)  # type: ignore[arg-type]


def _cached(
    manifest: str, out: Path, spec: SamplingSpec, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (memory-mapped) and labels, building the cache once per manifest and spec."""
    stamp = out / "spec.json"
    if not (stamp.is_file() and json.loads(stamp.read_text())["spec"] == spec.__dict__):
        build_cache(manifest, out, spec, workers=cfg.workers or None, progress=cfg.progress)
    clips = [
        Clip(Path(r["path"]), tuple(r["tags"]))
        for r in map(json.loads, (out / "clips.jsonl").read_text().splitlines())
    ]
    return np.load(out / "frames.npy", mmap_mode="r"), multi_hot(clips, TAGS)


def _batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class FrameSource:
    """Cached uint8 frames where training runs: copied to the GPU once, or read from the
    memory-mapped cache batch by batch on CPU."""

    def __init__(self, frames: np.ndarray, device: torch.device) -> None:
        self.device = device
        self.n = len(frames)
        self._np = frames
        self._dev = (
            torch.from_numpy(np.ascontiguousarray(frames)).to(device)
            if device.type != "cpu"
            else None
        )

    def take(self, idx: np.ndarray) -> torch.Tensor:
        if self._dev is not None:
            return self._dev[torch.from_numpy(idx).to(self.device)]
        return torch.from_numpy(np.asarray(self._np[idx]))


def lr_factor(progress: float, warmup: float) -> float:
    """One-cycle shape: cosine rise from 1/25 to 1 over `warmup`, cosine fall to 1e-4 after."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        lo, hi, u = 1 / 25, 1.0, p / warmup
    else:
        lo, hi, u = 1.0, 1e-4, (p - warmup) / max(1e-9, 1 - warmup)
    return hi + (lo - hi) * (1 + math.cos(math.pi * u)) / 2


@torch.no_grad()
def predict(
    model: torch.nn.Module, frames: FrameSource, spec: InputSpec, batch: int = 64
) -> np.ndarray:
    model.eval()
    out = []
    for idx in _batches(frames.n, batch, None):
        x = normalise(frames.take(idx), spec.mean, spec.std)
        out.append(torch.sigmoid(model(x)[0].float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(TAGS)), np.float32)


def train(cfg: TrainConfig) -> Path:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    device = resolve_device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    spec = sampling_spec(cfg)
    ispec = input_spec(cfg)

    x_tr, y_tr = _cached(cfg.train_manifest, out / "cache-train", spec, cfg)
    if cfg.val_manifest:
        x_va, y_va = _cached(cfg.val_manifest, out / "cache-val", spec, cfg)
        tr_idx = np.arange(len(y_tr))
    else:
        perm = np.random.default_rng(cfg.seed + 1).permutation(len(y_tr))
        n_val = max(1, int(len(y_tr) * cfg.val_fraction))
        va_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        x_va, y_va = np.asarray(x_tr[va_idx]), y_tr[va_idx]
    train_frames = FrameSource(np.asarray(x_tr[tr_idx]) if not cfg.val_manifest else x_tr, device)
    val_frames = FrameSource(x_va, device)
    y_tr = y_tr[tr_idx]
    y_tr_dev = torch.from_numpy(y_tr).to(device)

    limits = observed_group_limits(y_tr, TAGS, TAG_GROUPS)
    model = create_model(cfg.arch, num_classes=len(TAGS)).to(device)
    loss_fn = create_loss(cfg.loss)
    augmenter = BatchAugmenter(TAGS, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(y_tr) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    start_epoch, best_j, history, step, elapsed = 0, -1.0, [], 0, 0.0
    ckpt = out / "checkpoint.pt"
    if cfg.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False, map_location=device)
        if state["config"] == asdict(cfg):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_epoch, best_j, history = state["epoch"] + 1, state["best_j"], state["history"]
            step, elapsed = state["step"], state["elapsed"]

    def progress() -> float:
        p = step / total_steps
        return max(p, elapsed / cfg.time_budget_s) if cfg.time_budget_s > 0 else p

    for epoch in range(start_epoch, cfg.epochs):
        if progress() >= 1.0:
            break
        model.train()
        t0, total, seen = time.time(), 0.0, 0
        bar = tqdm(
            _batches(len(y_tr), cfg.batch_size, rng),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress,
        )
        for idx in bar:
            if progress() >= 1.0:
                break
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(progress(), cfg.warmup)
            frames, y = augmenter.random(
                train_frames.take(idx), y_tr_dev[torch.from_numpy(idx).to(device)], gen
            )
            x = normalise(frames, ispec.mean, ispec.std)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)[0]
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total += loss.item() * len(idx)
            seen += len(idx)
            elapsed += time.time() - t0
            t0 = time.time()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            scores = predict(model, val_frames, ispec)
        truth = y_va.astype(bool)
        thresholds = calibrate_thresholds(scores, truth)
        rule = DecisionRule(TAGS, TAG_GROUPS, tuple(thresholds.tolist()), limits)
        metrics = evaluate_predictions(scores, rule.predict(scores), truth, TAGS, TAG_GROUPS)
        elapsed += time.time() - t0
        row = {
            "epoch": epoch + 1,
            "train_loss": total / max(1, seen),
            "seconds": round(elapsed, 2),
            "lr": cfg.lr * lr_factor(progress(), cfg.warmup),
            **{f"val_{k}": v for k, v in metrics.items()},
        }
        history.append(row)
        print(json.dumps(row), flush=True)
        if metrics["mean_jaccard"] > best_j:
            best_j = metrics["mean_jaccard"]
            best = _best_state(cfg, model, rule, metrics, epoch)
            torch.save(best, out / "best.pt")
        torch.save(
            {
                "config": asdict(cfg),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "step": step,
                "elapsed": elapsed,
                "best_j": best_j,
                "history": history,
            },
            ckpt,
        )
        (out / "history.json").write_text(json.dumps(history, indent=1))
    return out / "best.pt"


def _best_state(
    cfg: TrainConfig,
    model: torch.nn.Module,
    rule: DecisionRule,
    metrics: dict[str, float],
    epoch: int,
) -> dict[str, Any]:
    return {
        "config": asdict(cfg),
        "arch": cfg.arch,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "thresholds": list(rule.thresholds),
        "group_limits": rule.group_limits,
        "val_metrics": metrics,
        "epoch": epoch + 1,
        "tags": list(TAGS),
        "embedding_size": int(getattr(model, "embedding_size", 0)),
    }
