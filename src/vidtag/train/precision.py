"""Where training runs in bf16, and the memory layout its convolutions are fastest in.

bf16 autocast pays where the hardware multiplies bf16 natively: CUDA, and x86 CPUs with
AVX512-BF16 or AMX (oneDNN). Elsewhere bf16 is emulated, no faster than fp32, so it stays off.
On CPU, oneDNN's convolutions also want channels-last tensors: a 3-D network's training step on
this project's 2-core AVX512-BF16 box runs 2-3x faster with both (benchmarks/train_step.py).

oneDNN's bf16 Conv3d weight gradient (torch 2.13, AVX512-BF16) is at times NaN when the input is
shorter than the kernel along a dimension (a (3,1,1) temporal kernel over T=2, which R(2+1)D
reaches at 8 frames): `fp32_short_conv3d` runs exactly those convolutions in fp32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_FORMATS = {5: torch.channels_last_3d, 4: torch.channels_last}


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 autocast speeds training up on `device`."""
    if device.type == "cuda":
        return True
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def for_cpu_training(net: torch.nn.Module, bf16: bool) -> torch.nn.Module:
    """`net` as the trainer runs it on CPU: convolution weights channels-last, and with `bf16`
    (autocast) the convolutions it would get NaN gradients from in fp32. Feed it batches
    through `channels_last_input`."""
    to_channels_last(net)
    return fp32_short_conv3d(net) if bf16 else net


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Store every 5-D (Conv3d) weight channels-last-3d and every 4-D (Conv2d) one
    channels-last, in place; `Module.to(memory_format=...)` takes one format for all and
    refuses a network that mixes 2-D and 3-D convolutions (ECO)."""
    for p in module.parameters():
        fmt = _FORMATS.get(p.dim())
        if fmt is not None:
            p.data = p.data.contiguous(memory_format=fmt)
    return module


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """An (N, C, T, H, W) batch laid out channels-last-3d."""
    return x.contiguous(memory_format=torch.channels_last_3d)


def fp32_short_conv3d(module: torch.nn.Module) -> torch.nn.Module:
    """Make every Conv3d of `module` leave CPU autocast for inputs shorter than its kernel along
    T, H or W (in place; weights and state dict unchanged). In a random sweep of 300 shapes,
    strides, groups and layouts, every NaN gradient came from such an input."""
    for conv in module.modules():
        if isinstance(conv, torch.nn.Conv3d):
            conv.forward = _leaves_autocast_when_short(conv)  # type: ignore[method-assign,assignment]
    return module


def _leaves_autocast_when_short(conv: torch.nn.Conv3d) -> Callable[[torch.Tensor], torch.Tensor]:
    forward = conv.forward

    def guarded(x: torch.Tensor) -> torch.Tensor:
        short = any(n < k for n, k in zip(x.shape[2:], conv.kernel_size, strict=True))
        if short and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return forward(x.float())
        return forward(x)

    return guarded
