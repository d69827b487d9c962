"""Single-process trainer: frame cache -> augment -> shared preprocessing -> network + loss.

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
from vidtag.runtime.preprocess import preprocess
from vidtag.tags import TAG_GROUPS, TAG_INDEX, TAGS
from vidtag.train.augment import augment
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


def _make_batch(
    frames: np.ndarray,
    y: np.ndarray,
    idx: np.ndarray,
    spec: InputSpec,
    rng: np.random.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i in idx:
        f, t = np.asarray(frames[i]), y[i]
        if rng is not None:
            f, t = augment(f, t, rng, TAG_INDEX)
        xs.append(preprocess(f, spec))
        ys.append(t)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


@torch.no_grad()
def predict(
    model: torch.nn.Module, frames: np.ndarray, spec: InputSpec, batch: int = 32
) -> np.ndarray:
    model.eval()
    out = []
    for idx in _batches(len(frames), batch, None):
        x, _ = _make_batch(frames, np.zeros((len(frames), 1), np.float32), idx, spec, None)
        out.append(torch.sigmoid(model(x)[0]).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(TAGS)), np.float32)


def train(cfg: TrainConfig) -> Path:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    rng = np.random.default_rng(cfg.seed)
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
    x_tr_np = np.asarray(x_tr[tr_idx]) if not cfg.val_manifest else x_tr
    y_tr = y_tr[tr_idx]

    limits = observed_group_limits(y_tr, TAGS, TAG_GROUPS)
    model = create_model(cfg.arch, num_classes=len(TAGS))
    loss_fn = create_loss(cfg.loss)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(y_tr) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15
    )
    start_epoch, best_j, history = 0, -1.0, []
    ckpt = out / "checkpoint.pt"
    if cfg.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        if state["config"] == asdict(cfg):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start_epoch, best_j, history = state["epoch"] + 1, state["best_j"], state["history"]

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0, total = time.time(), 0.0
        bar = tqdm(
            _batches(len(y_tr), cfg.batch_size, rng),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress,
        )
        for idx in bar:
            x, y = _make_batch(x_tr_np, y_tr, idx, ispec, rng)
            loss = loss_fn(model(x)[0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        scores = predict(model, x_va, ispec)
        truth = y_va.astype(bool)
        thresholds = calibrate_thresholds(scores, truth)
        rule = DecisionRule(TAGS, TAG_GROUPS, tuple(thresholds.tolist()), limits)
        metrics = evaluate_predictions(scores, rule.predict(scores), truth, TAGS, TAG_GROUPS)
        row = {
            "epoch": epoch + 1,
            "train_loss": total / len(y_tr),
            "seconds": time.time() - t0,
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
                "scheduler": sched.state_dict(),
                "epoch": epoch,
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
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "thresholds": list(rule.thresholds),
        "group_limits": rule.group_limits,
        "val_metrics": metrics,
        "epoch": epoch + 1,
        "tags": list(TAGS),
        "embedding_size": int(getattr(model, "embedding_size", 0)),
    }
