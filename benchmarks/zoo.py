"""Train every (network, head) pair asked for under the same wall-time budget on one STB-1 train
split and print the test metrics of each, side by side. A benchmark: it prints numbers.

    python benchmarks/zoo.py --train build/stb1/train/manifest.jsonl \\
        --test build/stb1/test/manifest.jsonl --budget 180 \\
        --pairs x2plus1d_s:bce,x2plus1d_s:warp,x2plus1d_s:lsep,r2plus1d_18:bce

The train split's frame cache is decoded once (`--cache`, or built on first use) and shared by
every run through a symlink, as is the test split's. A pair may name its own input,
`arch:head@FxHxW` (e.g. a large network at a size that gives it several epochs of the budget);
its caches are built once per size under `--work`. `--resume` skips the pairs already in the
`--json` report (written after every pair, keeping the rows of earlier invocations) and
resumes an interrupted run from its last epoch's checkpoint (training time up to that
checkpoint counts against the budget), so a long table can be run in parts, across machines:
every row carries a digest of the train and test clips it was measured on, and a report of
other data is refused. Each run keeps 10 % of the train split for validation (threshold
calibration and best-epoch choice), as `vidtag train` does. Each row also gets its CPU latency
at the serving input size (`--latency-size`, batch 1), and a sized pair also at its own input:
the network's forward pass and the head's decision (the sequence decoders' search included);
`--latency-only` prints just those, without training.
"""

from __future__ import annotations

import argparse
import hashlib
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
    shared.mkdir(parents=True, exist_ok=True)  # the first run builds it through the link
    link = run / "cache-train"
    if not link.exists():
        link.symlink_to(shared.resolve(), target_is_directory=True)


DEFAULT_INPUT = f"{TrainConfig.frames}x{TrainConfig.height}x{TrainConfig.width}"


def parse_pair(pair: str) -> tuple[str, str, str | None]:
    """ "arch:head" or "arch:head@FxHxW" -> (arch, head, size or None)."""
    names, _, size = pair.partition("@")
    arch, head = names.split(":")
    if size:
        _size(size)  # fail early on a malformed size
    return arch, head, size or None


def _size(size: str) -> tuple[int, int, int]:
    f, h, w = (int(v) for v in size.lower().split("x"))
    return f, h, w


def data_digest(*manifests: str) -> str:
    """sha256 (16 hex digits) of the manifests' clips, bytes and tags: rows measured in
    different sessions share a table only if their STB-1 splits are the same files."""
    h = hashlib.sha256()
    for manifest in manifests:
        for clip in read_manifest(manifest):
            h.update(",".join(clip.tags).encode() + b"\0")
            with open(clip.path, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def run_pair(
    arch: str, head: str, size: str | None, args: argparse.Namespace
) -> dict[str, float | str]:
    work = Path(args.work)
    out = work / (f"{arch}-{head}" + (f"-{size}" if size else ""))
    _link_cache(out, Path(args.cache) if size is None else work / f"cache-train-{size}")
    frames, height, width = _size(size or DEFAULT_INPUT)
    cfg = TrainConfig(
        train_manifest=args.train,
        val_manifest=None,
        out_dir=str(out),
        arch=arch,
        loss=head,
        frames=frames,
        height=height,
        width=width,
        epochs=100_000,
        time_budget_s=args.budget,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        progress=False,
        resume=args.resume,
        keep_epochs=False,
        init=args.init,
    )
    t0 = time.time()
    best = torch.load(train(cfg), weights_only=False, map_location="cpu")
    seconds = time.time() - t0
    net = create_model(arch, num_classes=len(TAGS))
    net.load_state_dict(best["model"])
    head_module = build_head(head, net)
    head_module.load_state_dict(best["head"])
    test_cache = work / ("cache-test" if size is None else f"cache-test-{size}")
    clips, labels = _cached(args.test, test_cache, sampling_spec(cfg), cfg)
    test = FrameSource(clips, torch.device("cpu"))
    scores = predict(net, test, input_spec(cfg), head_module)
    if head_module.exportable:  # the rule the server would apply
        rule = DecisionRule(TAGS, TAG_GROUPS, tuple(best["thresholds"]), best["group_limits"])
        pred = rule.predict(scores)
    else:  # the head's own decision (decoders, count estimators)
        pred = head_sets(net, test, input_spec(cfg), head_module)
    m = evaluate_predictions(scores, pred, labels.astype(bool), TAGS, TAG_GROUPS)
    history = json.loads((out / "history.json").read_text())
    n_train = len(read_manifest(args.train)) - int(history[-1]["val_clips"])
    params = sum(p.numel() for p in net.parameters())
    return {
        "arch": arch,
        "head": head,
        "input": size or DEFAULT_INPUT,
        # passes over the clips trained on (a budget may stop the run inside an epoch)
        "epochs": history[-1]["step"] * cfg.batch_size * cfg.accumulate / n_train,
        "best_epoch": float(best["epoch"]),
        "train_s": seconds,
        "params_M": params / 1e6,
        **{k: float(v) for k, v in m.items()},
    }


def latency_row(arch: str, head: str, size: str, reps: int) -> dict[str, float | str]:
    """CPU latency of one clip (batch 1) at `size` (FxHxW), PyTorch eager with random weights
    (they do not change the time): the network's forward pass, and the head's decision on its
    outputs - scores for the threshold heads (their rule is a numpy comparison on top), the
    heads' own search for the sequence decoders (cnn_rnn, scnn_rnn, ria). Medians of `reps`
    after 3 warm-ups."""
    f, h, w = _size(size)
    torch.manual_seed(0)
    net = create_model(arch, num_classes=len(TAGS)).eval()
    head_module = build_head(head, net).eval()
    decide = head_module.scores if head_module.exportable else head_module.predict
    x = torch.randn(1, 3, f, h, w)
    net_s, head_s = [], []
    with torch.inference_mode():
        for k in range(reps + 3):
            t0 = time.perf_counter()
            logits, emb = (t.float() for t in net(x))
            t1 = time.perf_counter()
            decide(logits, emb)
            t2 = time.perf_counter()
            if k >= 3:
                net_s.append(t1 - t0)
                head_s.append(t2 - t1)
    return {
        "arch": arch,
        "head": head,
        "latency_size": size,
        "net_ms": float(np.median(net_s) * 1e3),
        "head_ms": float(np.median(head_s) * 1e3),
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
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
    return {"arch": "prior", "head": "-", "input": "-", "epochs": 0.0, "best_epoch": 0.0,
            "train_s": 0.0, "params_M": 0.0, **{k: float(v) for k, v in m.items()}}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", help="STB-1 train manifest (training runs)")
    p.add_argument("--test", help="STB-1 test manifest (training runs)")
    p.add_argument("--cache", help="frame cache of the train manifest (training runs)")
    p.add_argument(
        "--pairs", required=True, help="comma-separated arch:head or arch:head@FxHxW pairs"
    )
    p.add_argument("--budget", type=float, default=180.0, help="training seconds per pair")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--work", default="build/zoo")
    p.add_argument(
        "--init", help="every pair starts from this checkpoint's network (e.g. a trained trunk)"
    )
    p.add_argument("--json", default="build/zoo/report.json")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip the pairs already in --json; resume an interrupted run from its checkpoint",
    )
    p.add_argument(
        "--max-pairs", type=int, default=0, help="train at most this many new pairs (0: all)"
    )
    p.add_argument(
        "--latency-size", default="8x224x128", help="FxHxW of the latency columns (serving's)"
    )
    p.add_argument("--latency-reps", type=int, default=20)
    p.add_argument(
        "--latency-only", action="store_true", help="only the latency of each pair, no training"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.latency_only:
        where = f"batch 1, {torch.get_num_threads()} threads"
        print(
            f"{'arch':<12} {'head':<9} {'input':<10} {'params':>7} {'net ms':>8} "
            f"{'head ms':>8}  ({where})"
        )
        for pair in args.pairs.split(","):
            arch, head, size = parse_pair(pair)
            size = size or args.latency_size
            r = latency_row(arch, head, size, args.latency_reps)
            print(
                f"{r['arch']:<12} {r['head']:<9} {size:<10} {float(r['params_M']):>6.2f}M "
                f"{float(r['net_ms']):>8.1f} {float(r['head_ms']):>8.2f}",
                flush=True,
            )
        return
    if not (args.train and args.test and args.cache):
        p.error("--train, --test and --cache are needed unless --latency-only")
    report = Path(args.json)
    digest = data_digest(args.train, args.test)
    done = json.loads(report.read_text())[1:] if args.resume and report.is_file() else []
    if other := {str(r.get("data")) for r in done} - {digest}:
        p.error(f"{report} holds rows of other data ({', '.join(sorted(other))}, not {digest})")
    measured = {(r["arch"], r["head"], r["input"]) for r in done}
    rows = [{**prior_row(args), "data": digest}, *done]  # the report's rows, kept as they are
    trained = 0
    for arch, head, size in (parse_pair(pair) for pair in args.pairs.split(",")):
        trained_at = size or DEFAULT_INPUT
        if (arch, head, trained_at) in measured:
            continue
        if args.max_pairs and trained == args.max_pairs:
            print(f"--max-pairs {args.max_pairs}: {arch}:{head} and after left for later")
            break
        rows.append({**run_pair(arch, head, size, args), "data": digest})
        trained += 1
        lat = latency_row(arch, head, args.latency_size, args.latency_reps)
        rows[-1].update(net_ms=lat["net_ms"], head_ms=lat["head_ms"])
        if trained_at != args.latency_size:  # and at the input it was trained for
            rows[-1]["net_ms_input"] = latency_row(arch, head, trained_at, args.latency_reps)[
                "net_ms"
            ]
        r = rows[-1]
        print(
            f"{arch:<12} {head:<9} {r['input']:<10} epochs {r['epochs']:>5.2f} "
            f"(best {int(r['best_epoch'])}) "
            + " ".join(f"{k} {float(r[k]):.3f}" for k in COLUMNS + GROUPS),
            flush=True,
        )
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(rows, indent=1))  # after every pair: a killed run keeps it
    print(
        f"\n{'arch':<12} {'head':<9} {'input':<10} {'params':>7} {'epochs':>6} "
        + " ".join(f"{c:>12}" for c in COLUMNS + GROUPS)
        + f" {'net ms':>8} {'head ms':>8}"
    )
    for r in rows:
        print(
            f"{r['arch']:<12} {r['head']:<9} {r['input']:<10} {float(r['params_M']):>6.2f}M "
            f"{r['epochs']:>6.2f} "
            + " ".join(f"{float(r[c]):>12.3f}" for c in COLUMNS + GROUPS)
            + "".join(f" {float(r.get(k, float('nan'))):>8.2f}" for k in ("net_ms", "head_ms"))
        )


if __name__ == "__main__":
    main()
