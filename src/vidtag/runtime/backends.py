"""Which inference runtime runs an artifact, where, at which precision; imports torch only when
the torch runtime is built (the CPU image has ONNX Runtime alone)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vidtag.runtime.device import check_device_name, is_cuda

RUNTIMES = ("onnx", "torch")
PRECISIONS = ("fp32", "fp16", "bf16")


class Backend(Protocol):
    def __call__(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, T, H, W) float -> (logits (N, C), embedding (N, E)) float32 numpy."""
        ...


def default_runtime(device: str) -> str:
    """ONNX Runtime on the CPU, PyTorch on CUDA."""
    return "torch" if is_cuda(device) else "onnx"


def default_precision(device: str) -> str:
    return "fp16" if is_cuda(device) else "fp32"


def check_runtime(runtime: str, device: str, precision: str) -> None:
    """ValueError, naming the setting, unless `runtime` can run on `device` at `precision`."""
    check_device_name(device)
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if runtime == "onnx" and is_cuda(device):
        raise ValueError(
            f"runtime 'onnx' runs on the CPU only; device {device!r} needs runtime 'torch' "
            "(the default there)"
        )
    if runtime == "onnx" and precision != "fp32":
        raise ValueError(f"runtime 'onnx' runs fp32 only, got precision {precision!r}")
    if precision == "fp16" and not is_cuda(device):
        raise ValueError("precision 'fp16' needs a CUDA device; use 'fp32' or 'bf16' on the CPU")


@dataclass(frozen=True)
class RuntimeOptions:
    """How a Tagger runs its network: `runtime` None picks `default_runtime(device)` and
    `precision` None `default_precision(device)`. `max_batch_size` caps the torch runtime's
    bucket sizes; `cuda_graphs` and `channels_last` apply to it alone."""

    runtime: str | None = None
    device: str = "cpu"
    precision: str | None = None
    cuda_graphs: bool = True
    channels_last: bool = True
    max_batch_size: int = 64

    def __post_init__(self) -> None:
        check_runtime(self.resolved_runtime, self.device, self.resolved_precision)
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")

    @property
    def resolved_runtime(self) -> str:
        return self.runtime or default_runtime(check_device_name(self.device))

    @property
    def resolved_precision(self) -> str:
        return self.precision or default_precision(check_device_name(self.device))


def create_backend(
    path: str | Path,
    options: RuntimeOptions,
    *,
    threads: int | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> Backend:
    """The backend `options` describe for the ONNX file at `path`, warmed up."""
    if options.resolved_runtime == "onnx":
        from vidtag.runtime.onnx_backend import OnnxBackend

        return OnnxBackend(path, threads=threads)
    from vidtag.runtime.torch_backend import TorchBackend, buckets_up_to

    return TorchBackend(
        path,
        options.device,
        options.resolved_precision,
        channels_last=options.channels_last,
        cuda_graphs=options.cuda_graphs,
        buckets=buckets_up_to(options.max_batch_size),
        input_shape=input_shape,
        threads=threads,
    )
