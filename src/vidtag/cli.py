"""The `vidtag` command: synth, cache, train, export, eval, sample, serve, tag."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _synth(args: argparse.Namespace) -> int:
    from vidtag.synth import generate

    path = generate(
        Path(args.out),
        args.count,
        split=args.split,
        seed=args.seed,
        workers=args.workers or None,
        progress=not args.quiet,
        time_limit_s=args.time_limit,
    )
    print(path)
    return 0


FILL_HELP = "a duplicate-avoiding frame is the best of its GOP's next FILL frames (1: the next)"


def _train(args: argparse.Namespace) -> int:
    from vidtag.heads import list_heads
    from vidtag.nets import list_models

    if args.list:
        print("\n".join([*list_models(), *list_heads()]))
        return 0
    if args.eval_epoch is not None:
        if not args.out:
            print("vidtag train: --eval-epoch needs --out (the run directory)", file=sys.stderr)
            return 2
        from vidtag.train.trainer import evaluate_epoch

        print(json.dumps(evaluate_epoch(args.out, args.eval_epoch), indent=1))
        return 0
    if not args.manifest or not args.out:
        print("vidtag train: --manifest and --out are required", file=sys.stderr)
        return 2
    from vidtag.train.config import TrainConfig
    from vidtag.train.trainer import train

    cfg = TrainConfig(
        train_manifest=args.manifest,
        val_manifest=args.val_manifest,
        out_dir=args.out,
        arch=args.arch,
        loss=args.loss,
        frames=args.frames,
        height=args.height,
        width=args.width,
        policy=args.policy,
        fill=args.fill,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        threads=args.threads,
        workers=args.workers,
        progress=not args.quiet,
        resume=not args.no_resume,
        device=args.device,
        amp=not args.no_amp,
        time_budget_s=args.time_budget,
        warmup=args.warmup,
        accumulate=args.accumulate,
        keep_epochs=not args.no_keep_epochs,
        augment=args.augment,
        calibrate=args.calibrate,
        init=args.init,
        render_per_epoch=args.render_per_epoch,
        render_seed=args.render_seed,
        render_workers=args.render_workers,
        aux_masks=args.aux_masks,
    )
    print(train(cfg))
    return 0


def _cache(args: argparse.Namespace) -> int:
    from vidtag.decode import SamplingSpec
    from vidtag.train.cache import build_cache

    spec = SamplingSpec(
        frames=args.frames,
        height=args.height,
        width=args.width,
        policy=args.policy,
        fill=args.fill,
    )
    print(build_cache(args.manifest, args.out, spec, args.workers or None, not args.quiet))
    return 0


def _export(args: argparse.Namespace) -> int:
    from vidtag.train.export import export_artifact

    print(
        export_artifact(
            args.out,
            name=args.name,
            version=args.version,
            checkpoint=args.checkpoint,
            atol=args.atol,
        )
    )
    return 0


def _model_dir(args: argparse.Namespace) -> Path:
    from vidtag.runtime.repository import default_repository, resolve_model

    if args.model and Path(args.model).is_dir() and (Path(args.model) / "model.json").is_file():
        return Path(args.model)
    return resolve_model(args.models or default_repository(), args.model, args.version)


def _eval(args: argparse.Namespace) -> int:
    from vidtag.train.evaluate import evaluate_artifact, format_metrics

    m = evaluate_artifact(
        _model_dir(args),
        args.manifest,
        policy=args.policy,
        fill=args.fill,
        limit=args.limit,
        progress=not args.quiet,
        decode_backend=args.decode_backend,
    )
    print(json.dumps(m, indent=1) if args.json else format_metrics(m))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from vidtag.decode import SamplingSpec, sample_frames

    spec = SamplingSpec(
        frames=args.frames,
        height=args.height,
        width=args.width,
        policy=args.policy,
        fill=args.fill,
        threads=args.threads,
        mode=args.mode,
        seed=args.seed,
        start=args.start,
        **({"budget": args.budget} if args.budget else {}),
    )
    clip = sample_frames(Path(args.path), spec, backend=args.backend)
    report: dict[str, Any] = {
        "path": args.path,
        "policy": spec.policy,
        "mode": spec.mode,
        "backend": args.backend,
        "targets_s": [round(t, 3) for t in clip.targets],
        "timestamps_s": [round(t, 3) for t in clip.timestamps],
        "frames_decoded": clip.frames_decoded,
        "packets_planned": clip.packets_planned,
        "corrupt_packets": clip.corrupt_packets,
        "mean_deviation_s": round(clip.mean_deviation, 4),
        "decode_ms": round(clip.seconds * 1000, 2),
        "video": {
            "width": clip.width,
            "height": clip.height,
            "duration_s": round(clip.duration, 3),
            "fps": round(clip.fps, 3),
            "codec": clip.codec,
            "rotation": clip.rotation,
            "keyframes": clip.keyframes,
        },
    }
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:<16} {v}")
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="artifact directory, or a model name in --models")
    p.add_argument("--models", help="model repository (default: the bundled models/)")
    p.add_argument("--version", help="model version (default: latest)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vidtag", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    handlers: dict[str, Handler] = {}

    p = sub.add_parser("synth", help="generate labelled STB-1 clips and a JSONL manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    p.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="seconds: start no clip after this; the manifest lists the clips written",
    )
    p.add_argument("--quiet", action="store_true")
    handlers["synth"] = _synth

    p = sub.add_parser(
        "train", help="train a network on a manifest (frames via the serving decoder)"
    )
    p.add_argument("--list", action="store_true", help="print registered networks and losses")
    p.add_argument("--manifest")
    p.add_argument("--val-manifest")
    p.add_argument("--out")
    p.add_argument("--arch", default="x2plus1d_s")
    p.add_argument("--loss", default="bce")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=160)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--policy", choices=["fast", "exact"], default="fast")
    p.add_argument("--fill", type=int, default=1, help=FILL_HELP)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--no-amp",
        action="store_true",
        help="train in fp32 (default: bf16 autocast on CUDA and on CPUs with AVX512-BF16/AMX)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="seconds of wall time: the LR schedule follows it and training stops there",
    )
    p.add_argument("--warmup", type=float, default=0.15, help="warm-up fraction of the schedule")
    p.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--no-keep-epochs", action="store_true", help="do not save every epoch")
    p.add_argument(
        "--augment",
        choices=["flip", "full"],
        default="flip",
        help="flip: label-aware flips and time reversal; full: also crop-resize and colour "
        "permutation",
    )
    p.add_argument(
        "--calibrate",
        choices=["f1", "jaccard"],
        default="f1",
        help="per-tag thresholds on the validation split that maximise each tag's F1, or the "
        "served rule's mean Jaccard (coordinate ascent: higher on validation, not on test in "
        "the zoo runs of 2026-11-27)",
    )
    p.add_argument(
        "--init",
        metavar="CKPT",
        help="start from this checkpoint's weights: the network (same arch, or one it extends), "
        "and the head when the loss is the same",
    )
    p.add_argument(
        "--render-per-epoch",
        type=int,
        default=0,
        metavar="N",
        help="also train on N fresh STB-1 clips per epoch, rendered straight to the input size "
        "(never encoded, each used once)",
    )
    p.add_argument("--render-seed", type=int, default=1000, help="synth seed of rendered clips")
    p.add_argument(
        "--aux-masks",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of a dense object-mask loss (x2plus1d networks; x2plus1d_o serves its "
        "maps): masks of rendered clips and of the cached clips of an STB-1 manifest",
    )
    p.add_argument(
        "--render-workers",
        type=int,
        default=None,
        help="processes rendering clips (default: all cores but one; 0: in the trainer)",
    )
    p.add_argument(
        "--eval-epoch",
        type=int,
        metavar="N",
        help="evaluate the weights saved after epoch N of the run in --out, and exit",
    )
    p.add_argument("--quiet", action="store_true")
    handlers["train"] = _train

    p = sub.add_parser(
        "cache", help="decode a manifest once into a training frame cache (train --out/cache-train)"
    )
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=160)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--policy", choices=["fast", "exact"], default="fast")
    p.add_argument("--fill", type=int, default=1, help=FILL_HELP)
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    p.add_argument("--quiet", action="store_true")
    handlers["cache"] = _cache

    p = sub.add_parser("export", help="checkpoint -> parity-checked model artifact")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="models", help="model repository to write into")
    p.add_argument("--name", default="stb1")
    p.add_argument("--version", default="1")
    p.add_argument("--atol", type=float, default=1e-3)
    handlers["export"] = _export

    p = sub.add_parser("eval", help="SYNTH_SPEC metrics of an artifact on a manifest")
    _add_model_args(p)
    p.add_argument("--manifest", required=True)
    p.add_argument("--policy", choices=["fast", "exact"])
    p.add_argument("--fill", type=int, help="override the artifact's SamplingSpec.fill")
    p.add_argument(
        "--decode-backend",
        default="pyav",
        help="decode backend: pyav (default), opencv, nvdec (the GPU path's frames)",
    )
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    handlers["eval"] = _eval

    p = sub.add_parser("sample", help="plan and decode frames of one clip, and report how")
    p.add_argument("path")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=160)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--policy", choices=["fast", "exact"], default="fast")
    p.add_argument("--fill", type=int, default=1, help=FILL_HELP)
    p.add_argument("--budget", type=float, help="decode cost cap in keyframe units")
    p.add_argument("--mode", choices=["uniform", "segments", "dense"], default="uniform")
    p.add_argument("--seed", type=int, default=0, help="segments mode: random offsets")
    p.add_argument("--start", type=float, help="dense mode: first frame (s)")
    p.add_argument("--threads", type=int, default=2, help="decoders on independent GOPs")
    p.add_argument("--backend", default="pyav", help="decode backend (pyav, opencv, nvdec)")
    p.add_argument("--json", action="store_true")
    handlers["sample"] = _sample

    try:
        from vidtag.server.cli import add_serve_arguments, run_serve

        add_serve_arguments(sub.add_parser("serve", help="run the gRPC service"))
        handlers["serve"] = run_serve
    except ImportError:
        pass
    try:
        from vidtag.client.cli import add_tag_arguments, run_tag

        add_tag_arguments(sub.add_parser("tag", help="tag clips (in-process, or --server)"))
        handlers["tag"] = run_tag
    except ImportError:
        pass
    try:
        from vidtag.client.cli import add_health_arguments, run_health

        add_health_arguments(
            sub.add_parser("health", help="grpc.health.v1 check of a server (exit 0: SERVING)")
        )
        handlers["health"] = run_health
    except ImportError:
        pass
    try:
        from vidtag.client.bench import add_bench_arguments, run_bench

        add_bench_arguments(sub.add_parser("bench", help="load-test a server (--server)"))
        handlers["bench"] = run_bench
    except ImportError:
        pass
    ap.set_defaults(_handlers=handlers)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from vidtag.errors import VidtagError

    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(args._handlers[args.command](args))
    except VidtagError as exc:
        print(f"vidtag {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
