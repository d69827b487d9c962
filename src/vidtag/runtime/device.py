"""Device names ("cpu", "cuda", "cuda:N") and what this machine can run, without importing torch
until a CUDA device is actually asked for (the CPU image has no torch)."""

from __future__ import annotations

import ctypes
import importlib
import re
from typing import Any

from vidtag.errors import BackendUnavailable

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_device_name(device: str) -> str:
    """`device` if it is "cpu", "cuda" or "cuda:N"; ValueError otherwise."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def is_cuda(device: str) -> bool:
    return check_device_name(device).startswith("cuda")


def cuda_index(device: str) -> int:
    """The N of "cuda:N" (0 for "cuda")."""
    check_device_name(device)
    return int(device.partition(":")[2] or 0)


def require_device(device: str) -> None:
    """Raise BackendUnavailable, in one line that says why, unless torch can use `device`."""
    if not is_cuda(device):
        return
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        raise BackendUnavailable(
            f"device {device!r} needs PyTorch with CUDA (pip install 'vidtag[nvdec]'); "
            "torch is not installed"
        ) from None
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"device {device!r} asked for, but torch {torch.__version__} sees no CUDA device "
            "(torch.cuda.is_available() is False)"
        )
    count = torch.cuda.device_count()
    if cuda_index(device) >= count:
        raise BackendUnavailable(f"device {device!r} asked for, but only {count} CUDA device(s)")


def nvdec_available() -> bool:
    """Whether PyNvVideoCodec imports here (its import also checks for the NVIDIA driver)."""
    try:
        importlib.import_module("PyNvVideoCodec")
    except Exception:  # ImportError, or its RuntimeError without a driver
        return False
    return True


# CUctx_flags scheduling values: how a thread waits for the GPU.
CUDA_WAITS = {"auto": 0, "spin": 1, "yield": 2, "block": 4}


def set_cuda_waits(gpu_id: int, mode: str, driver: Any = None) -> None:
    """Make this process's primary CUDA context on `gpu_id` (the one torch and our NVDEC
    sessions use) wait for the GPU by `mode`, before or after it exists.

    CUDA's default ("auto") spins a core through every wait while a process has no more
    contexts than the machine has cores, so sixteen NVDEC decode processes on sixteen cores
    spin through their decoders' waits. "block" sleeps on a primitive instead (a few
    microseconds more per wait). `driver` replaces libcuda (tests); BackendUnavailable if the
    driver is missing or refuses."""
    if mode not in CUDA_WAITS:
        raise ValueError(f"CUDA wait mode must be one of {list(CUDA_WAITS)}, got {mode!r}")
    if driver is None:
        try:
            driver = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise BackendUnavailable(f"no CUDA driver (libcuda.so.1): {exc}") from None

    def check(call: str, status: int) -> None:
        if status != 0:
            raise BackendUnavailable(f"{call} failed with CUDA error {status}")

    dev = ctypes.c_int(0)
    check("cuInit", driver.cuInit(0))
    check("cuDeviceGet", driver.cuDeviceGet(ctypes.byref(dev), gpu_id))
    set_flags = getattr(driver, "cuDevicePrimaryCtxSetFlags_v2", None)
    set_flags = set_flags or driver.cuDevicePrimaryCtxSetFlags  # drivers before CUDA 11
    check("cuDevicePrimaryCtxSetFlags", set_flags(dev, CUDA_WAITS[mode]))
