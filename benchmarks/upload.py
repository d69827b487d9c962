"""How long the server's event loop spends handing one request's decoded frames to the GPU,
while the inference thread keeps the GPU busy with batches (as under load) and while it idles.

Four ways, taking turns: the server's (`vidtag.runtime.upload.frames_on_device`: a copy from
pageable memory on the default stream, which can wait for the batches queued there), pinned
memory on the default stream, pageable memory on a stream of its own, and pinned memory on a
stream of its own with the default stream told to wait on the GPU (what the server did on
2026-11-28 until this script timed it on one H200: 10.3 against 1.8 ms median with batches
running). The input is the model's (T, H, W, 3) uint8 frames, preprocessed on the device.

    python benchmarks/upload.py [--device cuda] [--calls 300] [--batch 16] [--precision fp16]

On the CPU (`--device cpu`) every way is the same host copy: a smoke run of the script.
"""

from __future__ import annotations

import argparse
import functools
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


def _to_input(x: Any, spec: InputSpec) -> Any:
    return preprocess_tensor(x.permute(0, 3, 1, 2), spec)


def pinned_default_stream(frames: np.ndarray, spec: InputSpec, device: str) -> Any:
    """Pinned staging, the caller's stream: the copy is queued behind its batches."""
    host = torch.from_numpy(frames)
    if not device.startswith("cuda"):
        return _to_input(host.to(device), spec)
    return _to_input(host.pin_memory().to(device, non_blocking=True), spec)


def _own_stream(frames: np.ndarray, spec: InputSpec, device: str, pin: bool) -> Any:
    host = torch.from_numpy(frames)
    if not device.startswith("cuda"):
        return _to_input(host.to(device), spec)
    target = torch.device(device)
    side = _side_stream(target)
    staged = host.pin_memory() if pin else host
    with torch.cuda.stream(side):
        x = _to_input(staged.to(target, non_blocking=True), spec)
    consumer = torch.cuda.current_stream(target)
    consumer.wait_stream(side)
    x.record_stream(consumer)  # not reused before the consumer is done with it
    return x


def pageable_own_stream(frames: np.ndarray, spec: InputSpec, device: str) -> Any:
    """Pageable memory, a stream of its own: waits only for that stream's work."""
    return _own_stream(frames, spec, device, pin=False)


def pinned_own_stream(frames: np.ndarray, spec: InputSpec, device: str) -> Any:
    """Pinned memory, a stream of its own (the server's way on 2026-11-28)."""
    return _own_stream(frames, spec, device, pin=True)


@functools.cache
def _side_stream(device: Any) -> Any:
    return torch.cuda.Stream(device)


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
    ways = {
        "server (pageable, default stream)": frames_on_device,
        "pinned, default stream": pinned_default_stream,
        "pageable, own stream": pageable_own_stream,
        "pinned, own stream": pinned_own_stream,
    }

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
                f"  {name:<34} median {np.median(ms):6.3f} ms  p90 {np.percentile(ms, 90):6.3f}"
                f"  p99 {np.percentile(ms, 99):6.3f}  max {ms.max():6.3f}"
            )


if __name__ == "__main__":
    main()
