"""Single-process trainer: frame cache -> batched augmentation and normalisation -> network + loss.

Runs on CPU or one GPU (frames copied to the GPU once); steps run in bf16 autocast where the
device computes bf16 natively, CPU ones channels-last (vidtag.train.precision). With a time
budget the learning-rate schedule follows wall time, so a fixed device lease gets a complete
schedule.

Writes `<out>/checkpoint.pt` every epoch (resumable) and `<out>/best.pt` with the calibrated
thresholds and validation metrics of the best epoch (by mean Jaccard).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from vidtag.decode import SamplingSpec
from vidtag.heads import MultiLabelHead, create_head
from vidtag.nets import create_model
from vidtag.runtime.artifact import InputSpec
from vidtag.runtime.decision import DecisionRule, observed_group_limits
from vidtag.tags import TAG_GROUPS, TAGS
from vidtag.train.augment import BatchAugmenter, jitter, normalise
from vidtag.train.cache import build_cache
from vidtag.train.config import TrainConfig
from vidtag.train.manifest import Clip, multi_hot
from vidtag.train.masks import OBJECTS, cache_masks
from vidtag.train.metrics import calibrate_jaccard, calibrate_thresholds, evaluate_predictions
from vidtag.train.precision import bf16_native, channels_last_input, for_cpu_training
from vidtag.train.rendered import RenderedStream

MEAN = (0.45, 0.45, 0.45)
STD = (0.25, 0.25, 0.25)

CURVES_EVERY_S = 60.0


def input_spec(cfg: TrainConfig) -> InputSpec:
    return InputSpec(frames=cfg.frames, height=cfg.height, width=cfg.width, mean=MEAN, std=STD)


def sampling_spec(cfg: TrainConfig) -> SamplingSpec:
    return SamplingSpec(
        frames=cfg.frames,
        height=cfg.height,
        width=cfg.width,
        policy=cfg.policy,  # type: ignore[arg-type]
        fill=cfg.fill,
    )


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


def tag_matrix(tag_sets: list[tuple[str, ...]]) -> np.ndarray:
    """(N, len(TAGS)) float32 multi-hot labels of tag tuples."""
    return multi_hot([Clip(Path(""), t) for t in tag_sets], TAGS)


def _rendered_stream(
    cfg: TrainConfig, rank: int, world: int, first: int, aux_stride: int | None
) -> RenderedStream:
    """This rank's share of the rendered clips, from clip `first` of the run on; with the
    network's object-map stride, their masks on the maps' grid (stride-2 convolutions with
    padding 1 round sizes up)."""
    workers = cfg.render_workers
    if workers is None:
        workers = max(1, (os.cpu_count() or 1) - 1)
    grid = mask_grid(cfg, aux_stride) if aux_stride else None
    return RenderedStream(
        cfg.render_seed, cfg.frames, cfg.height, cfg.width, workers,
        start=first + rank, step=world, ahead=4 * cfg.batch_size, grid=grid,
    )  # fmt: skip


def mask_grid(cfg: TrainConfig, stride: int) -> tuple[int, int]:
    """(w, h) of the object maps of a network with `stride` (its stride-2 convolutions with
    padding 1 round sizes up)."""
    return -(-cfg.width // stride), -(-cfg.height // stride)


def lr_factor(progress: float, warmup: float) -> float:
    """One-cycle shape: cosine rise from 1/25 to 1 over `warmup`, cosine fall to 1e-4 after."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        lo, hi, u = 1 / 25, 1.0, p / warmup
    else:
        lo, hi, u = 1.0, 1e-4, (p - warmup) / max(1e-9, 1 - warmup)
    return hi + (lo - hi) * (1 + math.cos(math.pi * u)) / 2


AUX_POS_WEIGHT = 10.0  # objects cover a few percent of the cells


def build_net(cfg: TrainConfig) -> torch.nn.Module:
    """The configured network; with `aux_masks`, also its training-only object-map head."""
    if cfg.aux_masks <= 0:
        return create_model(cfg.arch, num_classes=len(TAGS))
    try:
        net = create_model(cfg.arch, num_classes=len(TAGS), aux=len(OBJECTS))
    except TypeError:  # a builder without the aux option
        net = None
    if net is None or not hasattr(net, "forward_aux"):
        raise ValueError(f"--aux-masks needs a network with an object-map head, not {cfg.arch}")
    return net


class _Objective(torch.nn.Module):
    """Network + head as one module, so DDP synchronises the head's parameters too."""

    def __init__(self, net: torch.nn.Module, head: MultiLabelHead, aux_weight: float = 0) -> None:
        super().__init__()
        self.net, self.head, self.aux_weight = net, head, aux_weight

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, amp: bool, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The head's loss; with `masks` ((N, T, K, h, w) uint8 coverage), plus the weighted
        per-cell BCE of the network's object maps."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            if masks is None:
                logits, emb = self.net(x)
            else:
                net: Any = self.net  # an X2Plus1D built with aux (build_net checked)
                logits, emb, maps = net.forward_aux(x)
        loss = self.head.loss(logits.float(), emb.float(), y)
        if masks is None:
            return loss
        target = masks.permute(0, 2, 1, 3, 4).float() / 255.0  # (N, K, T, h, w), as the maps
        pos = torch.tensor(AUX_POS_WEIGHT, device=x.device)
        aux = F.binary_cross_entropy_with_logits(maps.float(), target, pos_weight=pos)
        return loss + self.aux_weight * aux


def build_head(name: str, net: torch.nn.Module) -> MultiLabelHead:
    return create_head(
        name, num_classes=len(TAGS), embedding_size=int(getattr(net, "embedding_size", 0))
    )


@torch.no_grad()
def _per_batch(
    model: torch.nn.Module,
    frames: FrameSource,
    spec: InputSpec,
    head: MultiLabelHead,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: int = 64,
) -> np.ndarray:
    """`fn(logits, embedding)` over every clip, in batches, concatenated."""
    model.eval()
    head.eval()
    out = []
    for idx in _batches(frames.n, batch, None):
        logits, emb = (t.float() for t in model(normalise(frames.take(idx), spec.mean, spec.std)))
        out.append(fn(logits, emb).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(TAGS)), np.float32)


def predict(
    model: torch.nn.Module, frames: FrameSource, spec: InputSpec, head: MultiLabelHead
) -> np.ndarray:
    """(N, C) scores of the head's inference rule."""
    return _per_batch(model, frames, spec, head, lambda lo, e: head.scores(lo, e).float())


def head_sets(
    model: torch.nn.Module, frames: FrameSource, spec: InputSpec, head: MultiLabelHead
) -> np.ndarray:
    """(N, C) bool tag sets by the head's own decision (decoders, count estimators)."""
    return _per_batch(model, frames, spec, head, head.predict).astype(bool)


@dataclass
class _Data:
    train: FrameSource
    y_train: np.ndarray
    val: FrameSource
    y_val: np.ndarray
    masks: FrameSource | None = None  # object masks of the train clips (STB-1 manifests)


def _train_masks(cfg: TrainConfig, out: Path, stride: int | None, rank: int) -> np.ndarray | None:
    """The cached train clips' object masks for `--aux-masks` (rank 0 computes them), or None
    where the manifest names no STB-1 clips and rendered clips bring the masks instead."""
    if not stride:
        return None
    cache, grid = out / "cache-train", mask_grid(cfg, stride)
    error = ""
    if rank == 0:
        try:
            cache_masks(cache, cfg.train_manifest, grid)
        except ValueError as exc:
            error = str(exc)
    _barrier()
    if not error:
        try:
            return cache_masks(cache, cfg.train_manifest, grid)
        except ValueError as exc:
            error = str(exc)
    if cfg.render_per_epoch == 0:
        raise ValueError(f"--aux-masks: no masks for the cached clips ({error}) and no rendering")
    print(f"--aux-masks: only rendered clips carry masks ({error})", flush=True)
    return None


def _load_data(
    cfg: TrainConfig, out: Path, device: torch.device, rank: int, stride: int | None = None
) -> _Data:
    """Frame caches (rank 0 builds them; the others wait), the train/val split, and with a
    mask `stride` the train clips' object masks."""
    spec = sampling_spec(cfg)
    if rank == 0:
        _cached(cfg.train_manifest, out / "cache-train", spec, cfg)
        if cfg.val_manifest:
            _cached(cfg.val_manifest, out / "cache-val", spec, cfg)
    _barrier()
    x_tr, y_tr = _cached(cfg.train_manifest, out / "cache-train", spec, cfg)
    m_tr = _train_masks(cfg, out, stride, rank)
    if cfg.val_manifest:
        x_va, y_va = _cached(cfg.val_manifest, out / "cache-val", spec, cfg)
        tr_idx = np.arange(len(y_tr))
        val = FrameSource(x_va, device)
    else:
        perm = np.random.default_rng(cfg.seed + 1).permutation(len(y_tr))
        n_val = max(1, int(len(y_tr) * cfg.val_fraction))
        va_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        x_tr, val, y_va = (
            np.asarray(x_tr[tr_idx]),
            FrameSource(np.asarray(x_tr[va_idx]), device),
            y_tr[va_idx],
        )
        y_tr = y_tr[tr_idx]
    masks = FrameSource(np.asarray(m_tr[tr_idx]), device) if m_tr is not None else None
    return _Data(FrameSource(x_tr, device), y_tr, val, y_va, masks)


def _world() -> tuple[int, int]:
    """(rank, world size) of a torchrun launch; (0, 1) otherwise."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _world()[1] > 1:
        dist.barrier()


def _init_distributed(cfg: TrainConfig) -> torch.device:
    """Join the torchrun group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    device = resolve_device(cfg.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def sync_batchnorm(net: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """`net` with SyncBatchNorm for a multi-GPU run: each BatchNorm normalises over the global
    batch, not a rank's slice of it (the same weights and state-dict keys: checkpoints and the
    export see plain BatchNorm). PyTorch has no CPU SyncBatchNorm, so gloo ranks keep per-rank
    statistics (2 CPU ranks x batch 8 trail 1 x 16 slightly; README)."""
    if world > 1 and device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net


def _rank_batches(
    n: int, size: int, rng: np.random.Generator, rank: int, world: int
) -> list[np.ndarray]:
    """This rank's batches of one epoch: every rank draws the same permutation and takes its
    slice of each global step (wrapping round, so all ranks run the same number of steps)."""
    order = rng.permutation(n)
    steps = max(1, n // (size * world))
    return [
        np.take(
            order, np.arange((s * world + rank) * size, (s * world + rank + 1) * size), mode="wrap"
        )
        for s in range(steps)
    ]


def train(cfg: TrainConfig) -> Path:
    """Train (single process, or one rank of a torchrun launch); return the best checkpoint."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _init_distributed(cfg)
    rank, world = _world()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
    use_amp = cfg.amp and bf16_native(device)  # training steps
    # Validation stays fp32 on CPU: the thresholds it calibrates serve the fp32 ONNX model.
    eval_amp = use_amp and device.type == "cuda"
    fast_layout = device.type == "cpu"  # oneDNN; untried on cuDNN
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(cfg.seed)  # same on every rank: the same permutation
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1000 * rank)
    ispec = input_spec(cfg)
    net = sync_batchnorm(build_net(cfg), device, world).to(device)
    if fast_layout:
        for_cpu_training(net, use_amp)
    stride = int(getattr(net, "aux_stride", 0)) if cfg.aux_masks > 0 else None
    data = _load_data(cfg, out, device, rank, stride)
    y_tr_dev = torch.from_numpy(data.y_train).to(device)

    limits = observed_group_limits(data.y_train, TAGS, TAG_GROUPS)
    head = build_head(cfg.loss, net).to(device)
    objective = _Objective(net, head, cfg.aux_masks)
    # An aux head idles on batches without masks: DDP must not wait for its gradients.
    unused = cfg.aux_masks > 0
    model: torch.nn.Module = (
        DDP(objective, find_unused_parameters=unused) if world > 1 else objective
    )
    augmenter = BatchAugmenter(TAGS, device)
    opt = torch.optim.AdamW(objective.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Rendered batches per epoch (each rank renders its own share of every global step).
    rendered_steps = -(-cfg.render_per_epoch // (cfg.batch_size * world))
    steps_per_epoch = max(1, len(data.y_train) // (cfg.batch_size * world)) + rendered_steps
    total_steps = cfg.epochs * max(1, steps_per_epoch // cfg.accumulate)
    start_epoch, best_j, history, step, elapsed = 0, -1.0, [], 0, 0.0
    ckpt = out / "checkpoint.pt"
    if cfg.init:
        _load_init(cfg, net, head, device)
    if cfg.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False, map_location=device)
        if state["config"] == asdict(cfg):
            net.load_state_dict(state["model"])
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["optimizer"])
            start_epoch, best_j, history = state["epoch"] + 1, state["best_j"], state["history"]
            step, elapsed = state["step"], state["elapsed"]

    def progress() -> float:
        p = step / total_steps
        if cfg.time_budget_s > 0:
            p = max(p, elapsed / cfg.time_budget_s)
        if world > 1:  # every rank follows the slowest clock, so they stop together
            t = torch.tensor([p], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            p = float(t.item())
        return p

    stream = (
        _rendered_stream(
            cfg,
            rank,
            world,
            start_epoch * rendered_steps * cfg.batch_size * world,
            stride,
        )
        if rendered_steps
        else None
    )
    try:
        curves_at = time.time()
        for epoch in range(start_epoch, cfg.epochs):
            if progress() >= 1.0:
                break
            model.train()
            t0, total, seen = time.time(), 0.0, 0
            batches: list[np.ndarray | None] = [
                *_rank_batches(len(data.y_train), cfg.batch_size, rng, rank, world),
                *[None] * rendered_steps,  # None: a batch of fresh rendered clips
            ]
            if rendered_steps:
                batches = [batches[i] for i in rng.permutation(len(batches))]
            bar = tqdm(
                batches,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not cfg.progress or rank > 0,
            )
            for k, idx in enumerate(bar):
                last_micro = (k + 1) % cfg.accumulate == 0 or k + 1 == len(batches)
                if k % cfg.accumulate == 0:
                    if progress() >= 1.0:
                        break
                    for g in opt.param_groups:
                        g["lr"] = cfg.lr * lr_factor(progress(), cfg.warmup)
                masks = None
                if idx is None:
                    assert stream is not None
                    clips, tags, got = stream.take(cfg.batch_size)
                    frames = torch.from_numpy(clips).to(device)
                    y = torch.from_numpy(tag_matrix(tags)).to(device)
                    if got is not None:
                        masks = torch.from_numpy(got).to(device)
                else:
                    frames, y = data.train.take(idx), y_tr_dev[torch.from_numpy(idx).to(device)]
                    if data.masks is not None:
                        masks = data.masks.take(idx)
                # Masks follow the frames through every geometric transform.
                frames, y, masks = augmenter.random(frames, y, gen, masks)
                x = normalise(frames, ispec.mean, ispec.std)
                if cfg.augment == "full":
                    x, masks = jitter(x, gen, masks=masks)
                if fast_layout:
                    x = channels_last_input(x)
                sync: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
                if isinstance(model, DDP) and not last_micro:
                    sync = model.no_sync()
                with sync:
                    loss = model(x, y, use_amp, masks)
                    if not torch.isfinite(loss):  # weights already NaN, or about to be
                        raise FloatingPointError(
                            f"non-finite loss {loss.item()} at step {step} of epoch {epoch + 1}"
                            + (" (bf16 autocast: try --no-amp)" if use_amp else "")
                        )
                    (loss / cfg.accumulate).backward()
                if last_micro:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    step += 1
                total += loss.item() * len(y)
                seen += len(y)
                elapsed += time.time() - t0
                t0 = time.time()
                bar.set_postfix(loss=f"{loss.item():.4f}")
            p_now = progress()  # collective: every rank calls it
            if rank == 0:
                row, rule, metrics = _validate(
                    net, head, data, ispec, limits, device, eval_amp, cfg.calibrate
                )
                elapsed += time.time() - t0
                row = {
                    "epoch": epoch + 1,
                    "train_loss": total / max(1, seen),
                    "seconds": round(elapsed, 2),
                    "lr": cfg.lr * lr_factor(p_now, cfg.warmup),
                    "step": step,
                    "world_size": world,
                    "rendered": stream.rendered if stream is not None else 0,
                    **row,
                }
                history.append(row)
                print(json.dumps(row), flush=True)
                state = _best_state(cfg, net, head, rule, metrics, epoch)
                if metrics["mean_jaccard"] > best_j:
                    best_j = metrics["mean_jaccard"]
                    torch.save(state, out / "best.pt")
                if cfg.keep_epochs:
                    (out / "epochs").mkdir(exist_ok=True)
                    torch.save(state, out / "epochs" / f"epoch-{epoch + 1:03d}.pt")
                torch.save(
                    {
                        "config": asdict(cfg),
                        "model": net.state_dict(),
                        "head": head.state_dict(),
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
                if time.time() - curves_at > CURVES_EVERY_S:  # a plot costs as much as a GPU epoch
                    write_curves(history, out / "curves.png")
                    curves_at = time.time()
            _barrier()
    finally:
        if stream is not None:
            stream.close()
    if rank == 0 and history:
        write_curves(history, out / "curves.png")
    if world > 1:
        dist.destroy_process_group()
    return out / "best.pt"


def _validate(
    net: torch.nn.Module,
    head: MultiLabelHead,
    data: _Data,
    ispec: InputSpec,
    limits: dict[str, tuple[int, int]],
    device: torch.device,
    use_amp: bool,
    calibrate: str = "f1",
) -> tuple[dict[str, float], DecisionRule, dict[str, float]]:
    """Metrics of the decision that will be used: for exportable heads the served rule
    (per-tag thresholds calibrated by `calibrate` + group limits), for the others the head's
    own `predict`."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        scores = predict(net, data.val, ispec, head)
    truth = data.y_val.astype(bool)
    rule = DecisionRule(TAGS, TAG_GROUPS, (0.5,) * len(TAGS), limits)
    if calibrate == "jaccard":
        thresholds = calibrate_jaccard(scores, truth, rule)
    else:
        thresholds = calibrate_thresholds(scores, truth)
    head.set_thresholds(thresholds)
    rule = replace(rule, thresholds=tuple(thresholds.tolist()))
    if head.exportable:
        sets = rule.predict(scores)
    else:  # after set_thresholds: threshold-based decoders use them
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            sets = head_sets(net, data.val, ispec, head)
    metrics = evaluate_predictions(scores, sets, truth, TAGS, TAG_GROUPS)
    return {f"val_{k}": v for k, v in metrics.items()}, rule, metrics


def evaluate_epoch(out_dir: str | Path, epoch: int) -> dict[str, Any]:
    """Validation metrics of the weights saved after `epoch` (`keep_epochs` runs), recomputed
    on the run's own validation split."""
    out = Path(out_dir)
    path = out / "epochs" / f"epoch-{epoch:03d}.pt"
    if not path.is_file():
        have = sorted(p.name for p in (out / "epochs").glob("epoch-*.pt"))
        raise FileNotFoundError(f"{path} does not exist (saved: {have or 'none'})")
    state = torch.load(path, weights_only=False, map_location="cpu")
    cfg = TrainConfig(**state["config"])
    net = build_net(cfg)
    net.load_state_dict(state["model"])
    head = build_head(cfg.loss, net)
    head.load_state_dict(state["head"])
    data = _load_data(cfg, out, torch.device("cpu"), 0)
    limits = observed_group_limits(data.y_train, TAGS, TAG_GROUPS)
    cpu = torch.device("cpu")
    _, _, metrics = _validate(net, head, data, input_spec(cfg), limits, cpu, False, cfg.calibrate)
    return {"epoch": epoch, "arch": cfg.arch, **metrics}


def write_curves(history: list[dict[str, Any]], path: Path) -> bool:
    """Loss and validation metrics per epoch as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    for key in ("val_mean_jaccard", "val_mAP", "val_micro_f1", "val_acc_object", "val_acc_motion"):
        if key in history[0]:
            ax2.plot(epochs, [h[key] for h in history], label=key[4:])
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _load_init(
    cfg: TrainConfig, net: torch.nn.Module, head: MultiLabelHead, device: torch.device
) -> None:
    """Weights (not optimiser or schedule) from another run's best.pt or checkpoint.pt. Of
    another network, only one that the configured one extends (every tensor present, same
    shape): the modules it lacks start fresh, e.g. a head added to a trained trunk. Of another
    loss, the network only: the head starts fresh (the sequence decoders' papers train them
    on a trained CNN)."""
    assert cfg.init
    state = torch.load(cfg.init, weights_only=False, map_location=device)
    conf = state.get("config", {})
    arch, loss = state.get("arch", conf.get("arch")), conf.get("loss")
    if arch == cfg.arch:
        net.load_state_dict(state["model"])
    else:
        own = net.state_dict()
        alien = [k for k, v in state["model"].items() if k not in own or own[k].shape != v.shape]
        if alien:
            raise ValueError(
                f"--init {cfg.init} holds {arch}, which {cfg.arch} does not extend: "
                f"{len(alien)} tensors differ, e.g. {alien[:3]}"
            )
        fresh = net.load_state_dict(state["model"], strict=False).missing_keys
        print(f"--init from {arch}: {len(fresh)} tensors of {cfg.arch} start fresh", flush=True)
    if loss == cfg.loss:
        head.load_state_dict(state["head"])
    else:
        print(f"--init from {arch}/{loss}: the {cfg.loss} head starts fresh", flush=True)


def _best_state(
    cfg: TrainConfig,
    model: torch.nn.Module,
    head: MultiLabelHead,
    rule: DecisionRule,
    metrics: dict[str, float],
    epoch: int,
) -> dict[str, Any]:
    return {
        "config": asdict(cfg),
        "arch": cfg.arch,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "head": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "head_name": cfg.loss,
        "head_exportable": bool(head.exportable),
        "thresholds": list(rule.thresholds),
        "group_limits": rule.group_limits,
        "val_metrics": metrics,
        "epoch": epoch + 1,
        "tags": list(TAGS),
        "embedding_size": int(getattr(model, "embedding_size", 0)),
    }
