"""PyTorch inference of an artifact's ONNX graph (`onnx_torch`), on the CPU or one CUDA device.

Batches are padded up to the next bucket size and run on one static input buffer, so every
call sees one of a few fixed shapes. On CUDA with `cuda_graphs`, `warmup()` captures one CUDA
graph per bucket (largest first, all sharing one memory pool) and a call is a copy into the
buffer plus a graph replay; elsewhere the same padded batch runs eagerly.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidtag.errors import ModelError
from vidtag.runtime.backends import check_runtime
from vidtag.runtime.device import is_cuda, require_device
from vidtag.runtime.onnx_torch import load_onnx_module

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def buckets_up_to(largest: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """The buckets below `largest`, then `largest` itself (a server's max batch size)."""
    return (*(b for b in sorted(set(buckets)) if b < largest), largest)


class TorchBackend:
    """Runs (N, 3, T, H, W) -> (logits (N, C), embedding (N, E)); the OnnxBackend contract.

    `batch` is a float numpy array or a torch tensor on any device (copied into the backend's
    device and precision); the outputs are always float32 numpy arrays, copied to the host
    before the call returns. A batch larger than the largest bucket runs in chunks of it.
    Weights are cast to `precision` once, at load: fp32, bf16, or fp16 on CUDA only (refused
    on the CPU, where half-precision 3D convolutions are missing or slow). Thread-safe: calls
    are serialised (they share the static buffers). `threads` sets torch's intra-op threads,
    a process-wide setting.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        device: str = "cpu",
        precision: str = "fp32",
        *,
        channels_last: bool = True,
        cuda_graphs: bool = True,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        input_shape: tuple[int, ...] | None = None,
        threads: int | None = None,
        warmup: bool = True,
    ) -> None:
        check_runtime("torch", device, precision)
        require_device(device)
        if not buckets or min(buckets) < 1:
            raise ValueError(f"buckets must be positive batch sizes, got {tuple(buckets)}")
        if precision == "bf16" and is_cuda(device):
            with torch.cuda.device(torch.device(device)):
                if not torch.cuda.is_bf16_supported():
                    raise ValueError(f"precision 'bf16' is not supported on {device}")
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.buckets = tuple(sorted(set(buckets)))
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        module = load_onnx_module(onnx_path)
        if len(module.input_names) != 1 or len(module.output_names) < 2:
            raise ModelError(
                f"{onnx_path}: expected one input and (logits, embedding) outputs, got "
                f"{module.input_names} -> {module.output_names}"
            )
        self.input_shape = _input_shape(module.input_shapes[0], input_shape, str(onnx_path))
        self._format = (
            torch.channels_last_3d
            if channels_last and len(self.input_shape) == 4
            else torch.contiguous_format
        )
        if channels_last:
            module.to_channels_last()
        self.module = module.to(device=self.device, dtype=self.dtype)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # shapes are fixed per bucket
        self._lock = threading.Lock()
        self._static = torch.zeros(
            (self.buckets[-1], *self.input_shape), dtype=self.dtype, device=self.device
        ).contiguous(memory_format=self._format)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]] = {}
        self.calls_by_bucket: dict[int, int] = dict.fromkeys(self.buckets, 0)
        if warmup:
            self.warmup()

    def warmup(self) -> None:
        """Run every bucket once (cuDNN autotuning, lazy initialisation), then, with CUDA
        graphs, capture one graph per bucket (until then, calls run eagerly). Idempotent."""
        with self._lock, self._on_device(), torch.inference_mode():
            if not self.cuda_graphs:
                for b in reversed(self.buckets):
                    self.module(self._static[:b])
                return
            if self._graphs:
                return
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for b in reversed(self.buckets):
                    for _ in range(2):
                        self.module(self._static[:b])
            torch.cuda.current_stream(self.device).wait_stream(side)
            # One pool for all buckets, captured largest first so the smaller reuse its memory.
            # A graph's replay may overwrite what another graph returned; that is safe here
            # because every call replays one graph and copies its outputs to the host before
            # the lock lets the next replay start.
            pool = torch.cuda.graph_pool_handle()
            for b in reversed(self.buckets):
                graph = torch.cuda.CUDAGraph()
                # thread_local: other threads may use the GPU meanwhile (a model version loaded
                # while the server decodes and infers with others).
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    out = self.module(self._static[:b])
                self._graphs[b] = (graph, out)
            torch.cuda.synchronize(self.device)

    def _on_device(self) -> contextlib.AbstractContextManager[Any]:
        """The backend's CUDA device current (graph capture and replay use the current one)."""
        cuda = self.device.type == "cuda"
        return torch.cuda.device(self.device) if cuda else contextlib.nullcontext()

    def bucket(self, n: int) -> int:
        """The smallest bucket holding `n` rows (`n` at most the largest bucket)."""
        return next(b for b in self.buckets if b >= n)

    def __call__(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.asarray(batch))
        if x.dim() != 1 + len(self.input_shape) or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"batch has shape {tuple(x.shape)}, the model wants (N, *{self.input_shape})"
            )
        if not x.is_floating_point():
            raise ValueError(f"batch must be floating point, got {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError("empty batch")
        largest = self.buckets[-1]
        parts = [self._run(x[i : i + largest]) for i in range(0, x.shape[0], largest)]
        logits, emb = (np.concatenate(p) if len(p) > 1 else p[0] for p in zip(*parts, strict=True))
        return logits, emb

    def _run(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        n = x.shape[0]
        b = self.bucket(n)
        with self._lock, self._on_device(), torch.inference_mode():
            static = self._static[:b]
            static[:n].copy_(x)  # casts, moves to the device, changes memory format
            if n < b:
                static[n:].zero_()  # rows are independent; zeros keep the padding finite
            if b in self._graphs:
                graph, outputs = self._graphs[b]
                graph.replay()
            else:
                outputs = self.module(static)
            self.calls_by_bucket[b] += 1
            # Copied out under the lock: the next replay overwrites the graph's outputs.
            logits, emb = (o[:n].float().cpu().numpy() for o in outputs[:2])
        return logits, emb


def _input_shape(
    declared: tuple[int | None, ...] | None, given: tuple[int, ...] | None, source: str
) -> tuple[int, ...]:
    """One sample's input shape: `given`, which must agree with the graph's declared shape
    (batch dimension first) where that is fixed, or else the declared one."""
    fixed = declared[1:] if declared else None
    if given is None:
        if fixed is None or None in fixed:
            raise ModelError(f"{source}: the graph does not fix its input shape; pass input_shape")
        return tuple(int(d) for d in fixed)  # type: ignore[arg-type]
    given = tuple(int(d) for d in given)
    if fixed is not None and (
        len(fixed) != len(given)
        or any(f is not None and f != g for f, g in zip(fixed, given, strict=False))
    ):
        raise ModelError(f"{source}: input shape {given} does not fit the graph's {declared}")
    return given
