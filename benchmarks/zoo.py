"""Train every (network, head) pair asked for under the same wall-time budget on one STB-1 train
split and print the test metrics of each, side by side. A benchmark: it prints numbers.

    python benchmarks/zoo.py --train build/stb1/train/manifest.jsonl \\
        --test build/stb1/test/manifest.jsonl --budget 180 \\
        --pairs x2plus1d_s:bce,x2plus1d_s:warp,x2plus1d_s:lsep,r2plus1d_18:bce

The train split's frame cache is decoded once (`--cache`, or built on first use) and shared by
every run through a symlink, as is the test split's. Each run keeps 10 % of the train split for
validation (threshold calibration and best-epoch choice), as `vidtag train` does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vidtag.nets import create_model
from vidtag.runtime.decision import DecisionRule
from vidtag.tags import TAG_GROUPS, TAGS
from vidtag.train.config import TrainConfig
from vidtag.train.manifest import multi_hot, read_manifest
from vidtag.train.metrics import evaluate_predictions, frequency_prior
from vidtag.train.trainer import (
    FrameSource,
    _cached,
    build_head,
    head_sets,
    input_spec,
    predict,
    sampling_spec,
    train,
)

COLUMNS = ("mean_jaccard", "mAP", "micro_f1", "macro_f1", "hit_at_1")
GROUPS = ("acc_object", "acc_scene", "acc_motion", "acc_camera")


def _link_cache(run: Path, shared: Path) -> None:
    run.mkdir(parents=True, exist_ok=True)
    link = run / "cache-train"
    if not link.exists():
        link.symlink_to(shared.resolve(), target_is_directory=True)


def run_pair(arch: str, head: str, args: argparse.Namespace) -> dict[str, float | str]:
    out = Path(args.work) / f"{arch}-{head}"
    _link_cache(out, Path(args.cache))
    cfg = TrainConfig(
        train_manifest=args.train,
        val_manifest=None,
        out_dir=str(out),
        arch=arch,
        loss=head,
        epochs=100_000,
        time_budget_s=args.budget,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        progress=False,
        resume=False,
        keep_epochs=False,
    )
    t0 = time.time()
    best = torch.load(train(cfg), weights_only=False, map_location="cpu")
    seconds = time.time() - t0
    net = create_model(arch, num_classes=len(TAGS))
    net.load_state_dict(best["model"])
    head_module = build_head(head, net)
    head_module.load_state_dict(best["head"])
    frames, labels = _cached(args.test, Path(args.work) / "cache-test", sampling_spec(cfg), cfg)
    test = FrameSource(frames, torch.device("cpu"))
    scores = predict(net, test, input_spec(cfg), head_module)
    if head_module.exportable:  # the rule the server would apply
        rule = DecisionRule(TAGS, TAG_GROUPS, tuple(best["thresholds"]), best["group_limits"])
        pred = rule.predict(scores)
    else:  # the head's own decision (decoders, count estimators)
        pred = head_sets(net, test, input_spec(cfg), head_module)
    m = evaluate_predictions(scores, pred, labels.astype(bool), TAGS, TAG_GROUPS)
    history = json.loads((out / "history.json").read_text())
    params = sum(p.numel() for p in net.parameters())
    return {
        "arch": arch,
        "head": head,
        "epochs": float(len(history)),
        "best_epoch": float(best["epoch"]),
        "train_s": seconds,
        "params_M": params / 1e6,
        **{k: float(v) for k, v in m.items()},
    }


def prior_row(args: argparse.Namespace) -> dict[str, float | str]:
    """The frequency-prior baseline every row must beat: the same tags for every test clip
    (`frequency_prior` of the train labels), ranked by their training frequency."""
    train_y = multi_hot(read_manifest(args.train), TAGS)
    test_y = multi_hot(read_manifest(args.test), TAGS).astype(bool)
    freq, chosen = frequency_prior(train_y)
    n = len(test_y)
    m = evaluate_predictions(
        np.broadcast_to(freq, test_y.shape), np.broadcast_to(chosen, test_y.shape), test_y,
        TAGS, TAG_GROUPS,
    )  # fmt: skip
    print(f"frequency prior: {[t for t, c in zip(TAGS, chosen, strict=True) if c]} for all {n}")
    return {"arch": "prior", "head": "-", "epochs": 0.0, "best_epoch": 0.0, "train_s": 0.0,
            "params_M": 0.0, **{k: float(v) for k, v in m.items()}}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", required=True, help="STB-1 train manifest")
    p.add_argument("--test", required=True, help="STB-1 test manifest")
    p.add_argument("--cache", required=True, help="frame cache of the train manifest")
    p.add_argument("--pairs", required=True, help="comma-separated arch:head pairs")
    p.add_argument("--budget", type=float, default=180.0, help="training seconds per pair")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--work", default="build/zoo")
    p.add_argument("--json", default="build/zoo/report.json")
    args = p.parse_args()
    rows = [prior_row(args)]
    for pair in args.pairs.split(","):
        arch, head = pair.split(":")
        rows.append(run_pair(arch, head, args))
        r = rows[-1]
        print(
            f"{arch:<12} {head:<9} epochs {int(r['epochs']):>3} (best {int(r['best_epoch'])}) "
            + " ".join(f"{k} {float(r[k]):.3f}" for k in COLUMNS + GROUPS),
            flush=True,
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))
    print(
        f"\n{'arch':<12} {'head':<9} {'params':>7} {'epochs':>6} "
        + " ".join(f"{c:>12}" for c in COLUMNS + GROUPS)
    )
    for r in rows:
        print(
            f"{r['arch']:<12} {r['head']:<9} {float(r['params_M']):>6.2f}M {int(r['epochs']):>6} "
            + " ".join(f"{float(r[c]):>12.3f}" for c in COLUMNS + GROUPS)
        )


if __name__ == "__main__":
    main()
