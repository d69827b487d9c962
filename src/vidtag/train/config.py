"""One typed, frozen training configuration, built at the CLI boundary."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    train_manifest: str
    val_manifest: str | None
    out_dir: str
    arch: str = "x2plus1d_s"
    loss: str = "bce"
    frames: int = 8
    height: int = 160
    width: int = 96
    policy: str = "fast"
    fill: int = 1  # SamplingSpec.fill of the frames trained on (and served: the artifact keeps it)
    epochs: int = 50
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1  # held out from train when no val manifest is given
    seed: int = 0
    threads: int = 0  # torch intra-op threads, 0 = all cores
    workers: int = 0  # decode processes for the frame cache, 0 = all cores
    progress: bool = True
    resume: bool = True
    device: str = "auto"  # "cpu", "cuda", "cuda:N" or "auto" (cuda when available)
    amp: bool = True  # bf16 autocast of training steps where bf16 is native (CUDA, AVX512-BF16)
    time_budget_s: float = 0.0  # > 0: the LR schedule runs on wall time and training stops there
    warmup: float = 0.15  # fraction of the schedule spent warming up
    accumulate: int = 1  # micro-batches per optimiser step (gradient accumulation)
    keep_epochs: bool = True  # also save every epoch's weights (for --eval-epoch)
    augment: str = "flip"  # "flip": label-aware flips and time reversal; "full": also jitter
    # Per-tag thresholds on the validation split maximising the served rule's mean Jaccard
    # ("jaccard") or each tag's own F1 ("f1").
    calibrate: str = "f1"
    init: str | None = None  # start from this checkpoint's network (and head, same loss)
    # Fresh STB-1 clips rendered (not encoded) per epoch, each used once, mixed with the
    # cached ones (vidtag.train.rendered); drawn from the train split with `render_seed`.
    render_per_epoch: int = 0
    render_seed: int = 1000  # keep it apart from the seeds of the encoded splits
    render_workers: int | None = None  # processes; None: all cores but one; 0: in process
    # > 0: weight of a dense object loss: the renderer's object masks supervise the network's
    # object maps (networks with `forward_aux` only), for rendered clips and for the cached
    # clips of an STB-1 manifest (vidtag.train.masks).
    aux_masks: float = 0.0

    def __post_init__(self) -> None:
        if self.accumulate < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError(f"accumulate, batch_size and epochs must be >= 1: {self}")
        if self.render_per_epoch < 0 or (self.render_workers or 0) < 0:
            raise ValueError(f"render_per_epoch and render_workers must be >= 0: {self}")
        if self.aux_masks < 0:
            raise ValueError(f"aux_masks must be >= 0: {self}")
        if self.calibrate not in ("jaccard", "f1"):
            raise ValueError(f"calibrate must be 'jaccard' or 'f1', not {self.calibrate!r}")
        if self.augment not in ("flip", "full"):
            raise ValueError(f"augment must be 'flip' or 'full', not {self.augment!r}")
