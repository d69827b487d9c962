"""How long the server's event loop spends handing one request's decoded frames to the GPU,
while the inference thread keeps the GPU busy with batches (as under load) and while it idles.

Two ways, interleaved: the frames copied from pageable memory on the default stream (what the
server did until 2026-11-28: the copy first waits for every batch queued there), and
`vidtag.runtime.upload.frames_on_device` (pinned memory, a stream of its own, the default
stream told to wait on the GPU). The input is the model's (T, H, W, 3) uint8 frames,
preprocessed there.

    python benchmarks/upload.py [--device cuda] [--calls 300] [--batch 16] [--precision fp16]

On the CPU (`--device cpu`) both ways are the same host copy: a smoke run of the script.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vidtag.runtime.artifact import InputSpec, load_meta
from vidtag.runtime.preprocess import preprocess_tensor
from vidtag.runtime.repository import default_repository, resolve_model
from vidtag.runtime.torch_backend import TorchBackend
from vidtag.runtime.upload import frames_on_device


def default_stream_copy(frames: np.ndarray, spec: InputSpec, device: str) -> Any:
    """The earlier upload: pageable memory, the caller's (default) stream."""
    x = torch.from_numpy(frames).to(device, non_blocking=True).permute(0, 3, 1, 2)
    return preprocess_tensor(x, spec)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure(
    ways: dict[str, Callable[[np.ndarray, InputSpec, str], Any]],
    spec: InputSpec,
    device: str,
    calls: int,
    gap_s: float,
) -> dict[str, np.ndarray]:
    """Milliseconds per call of each way, the ways taking turns, `gap_s` between calls."""
    rng = np.random.default_rng(0)
    frames = [
        rng.integers(0, 256, (spec.frames, spec.height, spec.width, 3), dtype=np.uint8)
        for _ in range(4)
    ]
    took: dict[str, list[float]] = {name: [] for name in ways}
    kept: list[Any] = []  # the last inputs stay referenced, as requests waiting for a batch do
    for i in range(calls + 5):
        for name, way in ways.items():
            t0 = time.perf_counter()
            kept.append(way(frames[i % len(frames)], spec, device))
            if i >= 5:
                took[name].append((time.perf_counter() - t0) * 1000)
            del kept[:-16]
            time.sleep(gap_s)
    _sync(device)
    return {name: np.asarray(v) for name, v in took.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--calls", type=int, default=300, help="calls per way and phase")
    ap.add_argument("--batch", type=int, default=16, help="rows per inference batch")
    ap.add_argument("--gap-ms", type=float, default=2.0, help="pause between calls")
    args = ap.parse_args()
    model_dir = resolve_model(default_repository())
    spec = load_meta(model_dir).input
    precision = args.precision if args.device.startswith("cuda") else "fp32"
    backend = TorchBackend(
        model_dir / "model.onnx", device=args.device, precision=precision, buckets=(args.batch,)
    )
    shape = (args.batch, 3, spec.frames, spec.height, spec.width)
    batch = torch.randn(shape, device=args.device)
    ways = {"default stream": default_stream_copy, "frames_on_device": frames_on_device}

    stop = threading.Event()
    batches = 0

    def infer() -> None:
        nonlocal batches
        while not stop.is_set():
            backend(batch)
            batches += 1

    print(
        f"{args.device}, {model_dir.name} {spec.frames}x{spec.height}x{spec.width}, "
        f"batches of {args.batch} ({precision}), {args.calls} calls per way, "
        f"{args.gap_ms} ms apart"
    )
    for phase in ("GPU idle", "inference running"):
        worker = threading.Thread(target=infer, daemon=True)
        if phase != "GPU idle":
            worker.start()
        t0, before = time.perf_counter(), batches
        took = measure(ways, spec, args.device, args.calls, args.gap_ms / 1000)
        rate = (batches - before) / (time.perf_counter() - t0)
        stop.set()
        if worker.is_alive():
            worker.join()
        stop.clear()
        print(f"{phase}" + (f" ({rate:.0f} batches/s meanwhile)" if rate else "") + ":")
        for name, ms in took.items():
            print(
                f"  {name:<17} median {np.median(ms):6.3f} ms  p90 {np.percentile(ms, 90):6.3f}"
                f"  p99 {np.percentile(ms, 99):6.3f}  max {ms.max():6.3f}"
            )


if __name__ == "__main__":
    main()
