"""Seconds per clip of one CPU training step (forward, backward, AdamW) of each network at the
training input size, in fp32 and as the trainer runs it (bf16 autocast where native, conv weights
and input channels-last: vidtag.train.precision), interleaved, median of `--repeat`. A
benchmark: it prints numbers.

    python benchmarks/train_step.py --archs r2plus1d_18,eco_lite --batch 8 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from vidtag.nets import create_model, list_models
from vidtag.tags import TAGS
from vidtag.train.precision import bf16_native, channels_last_input, for_cpu_training


def _stepper(arch: str, fast: bool, x: torch.Tensor) -> Callable[[], None]:
    """One training step of a fresh `arch` on batch `x`, as a closure."""
    torch.manual_seed(0)
    net = create_model(arch, num_classes=len(TAGS))
    amp = fast and bf16_native(torch.device("cpu"))
    if fast:
        for_cpu_training(net, amp)
        x = channels_last_input(x)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits, _ = net(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.float(), torch.zeros_like(logits, dtype=torch.float32)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default=",".join(list_models()))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", default="160x96", help="HxW")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    x = torch.randn(args.batch, 3, args.frames, h, w)
    print(
        f"bf16 native on this CPU: {bf16_native(torch.device('cpu'))}; threads "
        f"{torch.get_num_threads()}; batch {args.batch}x3x{args.frames}x{h}x{w}"
    )
    print(f"{'network':14s} {'fp32 s/clip':>12s} {'fast s/clip':>12s} {'speed-up':>9s}")
    for arch in args.archs.split(","):
        steps = {mode: _stepper(arch, mode == "fast", x) for mode in ("fp32", "fast")}
        times: dict[str, list[float]] = {mode: [] for mode in steps}
        for step in steps.values():
            step()  # warm-up: oneDNN picks its kernels
        for _ in range(args.repeat):
            for mode, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[mode].append((time.perf_counter() - t0) / args.batch)
        f32, fast = (statistics.median(times[m]) for m in ("fp32", "fast"))
        print(f"{arch:14s} {f32:12.4f} {fast:12.4f} {f32 / fast:8.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
