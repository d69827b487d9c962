"""Device names ("cpu", "cuda", "cuda:N") and what this machine can run, without importing torch
until a CUDA device is actually asked for (the CPU image has no torch)."""

from __future__ import annotations

import importlib
import re

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
