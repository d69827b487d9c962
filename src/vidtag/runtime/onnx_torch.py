"""Run an artifact's ONNX graph with PyTorch: no training code, no `onnx` package.

`OnnxModule` holds the graph's float initializers (and float `Constant`s) as buffers, so
`.to(device, dtype)` moves and casts the weights like any module, and its integer constants
(shapes, axes, indices) as host tensors that stay on the CPU. `forward` runs the nodes in
the file's order (ONNX graphs are topologically sorted) through the functions of
`onnx_ops`, dropping every intermediate value after its last use. Everything is checked at
load: an op, attribute value, opset or data type `onnx_ops` does not implement raises
ModelError naming it, so a graph that loads runs exactly as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vidtag.errors import ModelError
from vidtag.runtime.onnx_ops import OPS, REQUIRED, OpFn
from vidtag.runtime.onnx_proto import attribute_value, load_model, tensor_to_numpy, value_shape

OPSETS = range(13, 18)  # default-domain opsets whose operator forms onnx_ops implements


@dataclass(frozen=True)
class _Step:
    fn: OpFn
    inputs: tuple[int, ...]  # value slots; -1: an omitted optional input
    output: int
    free: tuple[int, ...]  # slots whose last use is this step


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module: `forward(*inputs)` returns the graph's outputs as a
    tuple, in the file's order. Build with `load_onnx_module`."""

    def __init__(self, model: Any, source: str = "<onnx>") -> None:
        super().__init__()
        self.source = source
        _check_opset(model, source)
        graph = model.graph
        slots: dict[str, int] = {}
        self._slots = 0
        self._buffer_slots: list[tuple[int, str]] = []
        self._host: list[tuple[int, Tensor]] = []

        def new_slot(name: str) -> int:
            slot = self._slots
            self._slots += 1
            if name:
                slots[name] = slot
            return slot

        def constant(name: str, value: np.ndarray) -> None:
            slot = new_slot(name)
            t = torch.from_numpy(value)
            if t.is_floating_point():
                key = f"c{slot}"
                self.register_buffer(key, t)
                self._buffer_slots.append((slot, key))
            else:
                self._host.append((slot, t))

        for init in graph.initializer:
            constant(init.name, tensor_to_numpy(init))
        inputs = [v for v in graph.input if v.name not in slots]
        self.input_names = tuple(v.name for v in inputs)
        # Per input: its dimensions as the file declares them (None: symbolic, e.g. the batch).
        self.input_shapes = tuple(value_shape(v) for v in inputs)
        if not self.input_names:
            raise ModelError(f"{source}: the graph has no inputs")
        self._inputs = tuple(new_slot(n) for n in self.input_names)
        pending: list[tuple[OpFn, tuple[int, ...], int]] = []
        for i, node in enumerate(graph.node):
            where = f"{source}: node {node.name or i!r} ({node.op_type})"
            if node.domain not in ("", "ai.onnx"):
                raise ModelError(f"{where}: operator domain {node.domain!r} is not supported")
            if node.op_type == "Constant":
                constant(node.output[0], _constant_value(node, where))
                continue
            fn = _build(node, where)
            ins = []
            for name in node.input:
                if name == "":
                    ins.append(-1)
                elif name not in slots:
                    raise ModelError(f"{where}: input {name!r} is not defined before its use")
                else:
                    ins.append(slots[name])
            if node.output[0] in slots:
                raise ModelError(f"{where}: value {node.output[0]!r} is assigned twice")
            pending.append((fn, tuple(ins), new_slot(node.output[0])))
        self.output_names = tuple(v.name for v in graph.output)
        missing = [n for n in self.output_names if n not in slots]
        if missing:
            raise ModelError(f"{source}: graph outputs {missing} are never computed")
        self._outputs = tuple(slots[n] for n in self.output_names)
        self._steps = _with_lifetimes(pending, keep=set(self._outputs))

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        if len(inputs) != len(self._inputs):
            raise TypeError(f"the graph takes {len(self._inputs)} inputs, got {len(inputs)}")
        env: list[Any] = [None] * self._slots
        for slot, key in self._buffer_slots:
            env[slot] = self._buffers[key]
        for slot, value in self._host:
            env[slot] = value
        for slot, x in zip(self._inputs, inputs, strict=True):
            env[slot] = x
        for step in self._steps:
            env[step.output] = step.fn(*(env[i] if i >= 0 else None for i in step.inputs))
            for slot in step.free:
                env[slot] = None
        return tuple(env[i] for i in self._outputs)

    def to_channels_last(self) -> OnnxModule:
        """Store 5-D (4-D) float buffers, the convolution weights, channels-last-3d
        (channels-last), so cuDNN picks NDHWC kernels for channels-last inputs; the values
        and the results are unchanged."""
        for key, buf in list(self._buffers.items()):
            if buf is not None and buf.dim() in (4, 5):
                fmt = torch.channels_last_3d if buf.dim() == 5 else torch.channels_last
                self._buffers[key] = buf.contiguous(memory_format=fmt)
        return self


def _check_opset(model: Any, source: str) -> None:
    versions = {o.domain: int(o.version) for o in model.opset_import}
    default = versions.pop("", versions.pop("ai.onnx", None))
    if default is None or default not in OPSETS:
        raise ModelError(
            f"{source}: ONNX opset {default} is not supported "
            f"(opsets {OPSETS.start}-{OPSETS.stop - 1})"
        )


def _constant_value(node: Any, where: str) -> np.ndarray:
    attrs = {a.name: a for a in node.attribute}
    if set(attrs) != {"value"}:
        raise ModelError(f"{where}: only the 'value' form is supported, got {sorted(attrs)}")
    value = attribute_value(attrs["value"])
    if not isinstance(value, np.ndarray):
        raise ModelError(f"{where}: attribute value is not a tensor")
    return value


def _build(node: Any, where: str) -> OpFn:
    if node.op_type not in OPS:
        raise ModelError(f"{where}: operator {node.op_type} is not supported")
    spec = OPS.get(node.op_type)
    given = {a.name: a for a in node.attribute}
    attrs: dict[str, Any] = {}
    for name, a in given.items():
        rule = spec.attrs.get(name)
        if rule is None:
            raise ModelError(f"{where}: attribute {name!r} is not supported")
        try:
            value = attribute_value(a)
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from None
        if not rule.ok(value):
            raise ModelError(
                f"{where}: attribute {name}={value!r} is not supported "
                f"(supported: {rule.supported})"
            )
        attrs[name] = value
    for name, rule in spec.attrs.items():
        if name not in attrs:
            if rule.default is REQUIRED:
                raise ModelError(f"{where}: required attribute {name!r} is missing")
            attrs[name] = rule.default
    reason = spec.check(attrs) if spec.check is not None else None
    if reason:
        raise ModelError(f"{where}: {reason} is not supported")
    lo, hi = spec.inputs
    if not lo <= len(node.input) <= hi:
        raise ModelError(f"{where}: {len(node.input)} inputs, supported {lo}..{hi}")
    if not node.output or not node.output[0]:
        raise ModelError(f"{where}: the node has no output")
    extra = [o for o in node.output[1:] if o]
    if extra:
        raise ModelError(f"{where}: optional outputs {extra} are not supported")
    try:
        return spec.build(attrs)
    except (TypeError, ValueError, IndexError) as exc:  # attribute values that cannot run
        raise ModelError(f"{where}: {exc}") from exc


def _with_lifetimes(
    pending: list[tuple[OpFn, tuple[int, ...], int]], keep: set[int]
) -> tuple[_Step, ...]:
    """The steps, each told which computed values it is the last to read (graph outputs are
    kept; constants and inputs are not the forward pass's to drop)."""
    last: dict[int, int] = {}
    for k, (_, ins, out) in enumerate(pending):
        for slot in (*ins, out):
            if slot >= 0:
                last[slot] = k
    produced = {out for _, _, out in pending}
    free: dict[int, list[int]] = {}
    for slot, k in last.items():
        if slot in produced and slot not in keep:
            free.setdefault(k, []).append(slot)
    return tuple(
        _Step(fn, ins, out, tuple(free.get(k, ()))) for k, (fn, ins, out) in enumerate(pending)
    )


def load_onnx_module(path: str | Path) -> OnnxModule:
    """The ONNX file at `path` as an `OnnxModule` in eval mode, on the CPU, float32."""
    return OnnxModule(load_model(path), str(path)).eval()
