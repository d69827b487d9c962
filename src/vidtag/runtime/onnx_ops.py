"""The ONNX operators `onnx_torch` runs, as torch functions, with the attribute values each
accepts: those our exporters emit (every registered network, opset 13-17), nothing more.

An op builder gets a node's attributes (defaults filled in, each value already checked against
its `Attr`) and returns the function the interpreter calls with the node's inputs. Integer
tensors (shapes, indices, axes) live on the host; `Reshape` and friends read them with
`tolist()`, so a CUDA graph captures the float work alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vidtag.registry import Registry

OpFn = Callable[..., Any]
REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """One attribute an op accepts: its default (`REQUIRED`: none), and which values run."""

    default: Any = REQUIRED
    ok: Callable[[Any], bool] = lambda v: True
    supported: str = ""  # what `ok` accepts, for the error message


@dataclass(frozen=True)
class OpSpec:
    build: Callable[[dict[str, Any]], OpFn]
    attrs: dict[str, Attr]
    inputs: tuple[int, int]  # fewest and most inputs (every op has one output)
    check: Callable[[dict[str, Any]], str | None] | None = None  # a reason to refuse, or None


OPS: Registry[OpSpec] = Registry("ONNX operator")


def op(
    name: str,
    inputs: tuple[int, int],
    attrs: dict[str, Attr] | None = None,
    check: Callable[[dict[str, Any]], str | None] | None = None,
) -> Callable[[Callable[[dict[str, Any]], OpFn]], Callable[[dict[str, Any]], OpFn]]:
    """Register `name`'s builder, with its input count range and accepted attributes."""

    def deco(build: Callable[[dict[str, Any]], OpFn]) -> Callable[[dict[str, Any]], OpFn]:
        OPS.register(name)(OpSpec(build, attrs or {}, inputs, check))
        return build

    return deco


def _symmetric(pads: Sequence[int]) -> bool:
    half = len(pads) // 2
    return len(pads) % 2 == 0 and tuple(pads[:half]) == tuple(pads[half:])


NOTSET = Attr(b"NOTSET", lambda v: v == b"NOTSET", "NOTSET (explicit pads)")
INTS = Attr(None, lambda v: isinstance(v, tuple), "a list of ints")
KERNEL = Attr(REQUIRED, lambda v: isinstance(v, tuple) and len(v) in (1, 2, 3), "1 to 3 ints")
AXIS = Attr(REQUIRED, lambda v: isinstance(v, int), "an int")
PADS = Attr(None, lambda v: v is None or _symmetric(v), "equal begin and end pads")
ZERO = Attr(0, lambda v: v == 0, "0")
ONE_OR_ZERO = Attr(0, lambda v: v in (0, 1), "0 or 1")


def _spatial(a: dict[str, Any], key: str, n: int, fill: int) -> list[int]:
    v = a.get(key)
    return [fill] * n if v is None else list(v)


def _pool_check(a: dict[str, Any]) -> str | None:
    k = a["kernel_shape"]
    pads = _spatial(a, "pads", 2 * len(k), 0)[: len(k)]
    if any(p > kk // 2 for p, kk in zip(pads, k, strict=True)):
        return f"pads {pads} larger than half the kernel {list(k)}"
    return None


# -- convolution, normalisation, dense -------------------------------------------------------


@op(
    "Conv",
    inputs=(2, 3),
    attrs={
        "auto_pad": NOTSET,
        "dilations": INTS,
        "group": Attr(1, lambda v: v >= 1, ">= 1"),
        "kernel_shape": INTS,  # the weight's own shape decides
        "pads": PADS,
        "strides": INTS,
    },
)
def _conv(a: dict[str, Any]) -> OpFn:
    def run(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        n = w.dim() - 2
        conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
        return conv(
            x,
            w,
            b,
            stride=_spatial(a, "strides", n, 1),
            padding=_spatial(a, "pads", 2 * n, 0)[:n],
            dilation=_spatial(a, "dilations", n, 1),
            groups=a["group"],
        )

    return run


@op(
    "BatchNormalization",
    inputs=(5, 5),
    attrs={
        "epsilon": Attr(1e-5),
        "momentum": Attr(0.9),  # running-statistics update: training only
        "training_mode": ZERO,
    },
)
def _batch_norm(a: dict[str, Any]) -> OpFn:
    eps = float(a["epsilon"])

    def run(x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)

    return run


@op(
    "Gemm",
    inputs=(2, 3),
    attrs={
        "alpha": Attr(1.0),
        "beta": Attr(1.0),
        "transA": ONE_OR_ZERO,
        "transB": ONE_OR_ZERO,
    },
)
def _gemm(a: dict[str, Any]) -> OpFn:
    alpha, beta = float(a["alpha"]), float(a["beta"])
    trans_a, trans_b = bool(a["transA"]), bool(a["transB"])

    def run(x: Tensor, w: Tensor, c: Tensor | None = None) -> Tensor:
        if trans_b and not trans_a and alpha == 1.0 and (c is None or beta == 1.0):
            return F.linear(x, w, c)
        y = (x.t() if trans_a else x) @ (w.t() if trans_b else w)
        if alpha != 1.0:
            y = y * alpha
        return y if c is None else y + beta * c

    return run


# -- pooling and reductions ------------------------------------------------------------------


def _window(a: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
    """A pooling node's (kernel, strides, leading pads), one entry per spatial axis."""
    k = list(a["kernel_shape"])
    n = len(k)
    return k, _spatial(a, "strides", n, 1), _spatial(a, "pads", 2 * n, 0)[:n]


@op(
    "MaxPool",
    inputs=(1, 1),
    check=_pool_check,
    attrs={
        "auto_pad": NOTSET,
        "ceil_mode": ONE_OR_ZERO,
        "dilations": INTS,
        "kernel_shape": KERNEL,
        "pads": PADS,
        "storage_order": ZERO,
        "strides": INTS,
    },
)
def _max_pool(a: dict[str, Any]) -> OpFn:
    k, stride, padding = _window(a)
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(k) - 1]
    dilation = _spatial(a, "dilations", len(k), 1)
    ceil = bool(a["ceil_mode"])
    return lambda x: pool(x, k, stride, padding, dilation, ceil)


@op(
    "AveragePool",
    inputs=(1, 1),
    check=_pool_check,
    attrs={
        "auto_pad": NOTSET,
        # ONNX and torch divide the windows past the edge differently under ceil_mode.
        "ceil_mode": Attr(0, lambda v: v == 0, "0"),
        "count_include_pad": ONE_OR_ZERO,
        "dilations": Attr(None, lambda v: v is None or set(v) == {1}, "1"),
        "kernel_shape": KERNEL,
        "pads": PADS,
        "strides": INTS,
    },
)
def _avg_pool(a: dict[str, Any]) -> OpFn:
    k, stride, padding = _window(a)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(k) - 1]
    include = bool(a["count_include_pad"])
    return lambda x: pool(x, k, stride, padding, False, include)


def _reduce(a: dict[str, Any], fn: Callable[..., Tensor]) -> OpFn:
    axes, keep = a["axes"], bool(a["keepdims"])

    def run(x: Tensor) -> Tensor:
        return fn(x, dim=list(range(x.dim())) if axes is None else list(axes), keepdim=keep)

    return run


# Opset 13-17: axes is an attribute (opset 18 moved it to an input).
_REDUCE = {"axes": INTS, "keepdims": Attr(1, lambda v: v in (0, 1), "0 or 1")}


@op("ReduceMean", inputs=(1, 1), attrs=_REDUCE)
def _reduce_mean(a: dict[str, Any]) -> OpFn:
    return _reduce(a, torch.mean)


@op("ReduceMax", inputs=(1, 1), attrs=_REDUCE)
def _reduce_max(a: dict[str, Any]) -> OpFn:
    return _reduce(a, torch.amax)


# -- elementwise -----------------------------------------------------------------------------


@op("Relu", inputs=(1, 1))
def _relu(a: dict[str, Any]) -> OpFn:
    return F.relu


@op("Sigmoid", inputs=(1, 1))
def _sigmoid(a: dict[str, Any]) -> OpFn:
    return torch.sigmoid


@op("Add", inputs=(2, 2))
def _add(a: dict[str, Any]) -> OpFn:
    return torch.add


@op("Identity", inputs=(1, 1))
def _identity(a: dict[str, Any]) -> OpFn:
    return lambda x: x


# -- layout and shape arithmetic -------------------------------------------------------------


@op("Concat", inputs=(1, 1 << 16), attrs={"axis": AXIS})
def _concat(a: dict[str, Any]) -> OpFn:
    axis = int(a["axis"])
    return lambda *xs: torch.cat(xs, dim=axis)


@op("Transpose", inputs=(1, 1), attrs={"perm": INTS})
def _transpose(a: dict[str, Any]) -> OpFn:
    perm = a["perm"]
    return lambda x: x.permute(*(perm if perm is not None else range(x.dim() - 1, -1, -1)))


@op("Reshape", inputs=(2, 2), attrs={"allowzero": ZERO})
def _reshape(a: dict[str, Any]) -> OpFn:
    def run(x: Tensor, shape: Tensor) -> Tensor:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(shape.tolist())]
        return x.reshape(dims)

    return run


@op("Shape", inputs=(1, 1), attrs={"start": Attr(0), "end": Attr(None)})
def _shape(a: dict[str, Any]) -> OpFn:
    start, end = a["start"], a["end"]
    return lambda x: torch.tensor(tuple(x.shape)[start:end], dtype=torch.int64)


@op("Gather", inputs=(2, 2), attrs={"axis": Attr(0, AXIS.ok, AXIS.supported)})
def _gather(a: dict[str, Any]) -> OpFn:
    axis = int(a["axis"])

    def run(x: Tensor, idx: Tensor) -> Tensor:
        ax = axis % x.dim()
        idx = idx.to(x.device)
        flat = torch.where(idx < 0, idx + x.shape[ax], idx).reshape(-1)
        out = x.index_select(ax, flat)
        return out.reshape((*x.shape[:ax], *idx.shape, *x.shape[ax + 1 :]))

    return run


@op("Unsqueeze", inputs=(2, 2))  # opset 13+: axes is an input
def _unsqueeze(a: dict[str, Any]) -> OpFn:
    def run(x: Tensor, axes: Tensor) -> Tensor:
        rank = x.dim() + axes.numel()
        for ax in sorted(v % rank for v in axes.reshape(-1).tolist()):
            x = x.unsqueeze(ax)
        return x

    return run
