"""The ONNX graph interpreter on PyTorch: parity with ONNX Runtime for every registered network
and the bundled model, and a clear ModelError for anything it does not implement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vidtag.errors import ModelError
from vidtag.nets import create_model, list_models, r2plus1d
from vidtag.runtime import onnx_proto
from vidtag.runtime.onnx_torch import load_onnx_module
from vidtag.runtime.repository import default_repository
from vidtag.train.export import _onnx_export

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

# Slim variants of the big networks (the ops are the same as at full width), and an input that
# exercises ECO's ceil-mode pooling on odd sizes.
SLIM: dict[str, dict[str, Any]] = {
    "mfnet3d": {"width": 0.25, "num_fibers": 4},
    "eco_lite": {"width": 0.25},
    "eco_full": {"width": 0.25},
}
SIZE: dict[str, tuple[int, int, int]] = {"eco_lite": (4, 37, 45), "eco_full": (4, 37, 45)}


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """BN statistics away from the identity, so folded and unfolded BN both show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def _parity(path: Path, x: np.ndarray) -> tuple[float, float]:
    """(max |torch - ORT| over both outputs, max |ORT|)."""
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"frames": x}
    )
    with torch.inference_mode():
        got = load_onnx_module(path)(torch.from_numpy(x))
    assert len(got) == len(ref) == 2
    diff = max(float(np.abs(r - g.numpy()).max()) for r, g in zip(ref, got, strict=True))
    return diff, max(float(np.abs(r).max()) for r in ref)


@pytest.mark.parametrize("name", list_models())
def test_every_network_matches_onnx_runtime(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # R(2+1)D at a sliver of its widths: the same graph, 0.1 % of the 31-63 M weights.
    monkeypatch.setattr(r2plus1d, "WIDTHS", (8, 16, 16, 32))
    monkeypatch.setattr(r2plus1d, "STEM_MIDDLE", 6)
    torch.manual_seed(0)
    net = _randomise_bn(create_model(name, num_classes=5, **SLIM.get(name, {})))
    t, h, w = SIZE.get(name, (4, 32, 32))
    path = tmp_path / "m.onnx"
    _onnx_export(net, torch.zeros(1, 3, t, h, w), path)
    x = np.random.default_rng(1).standard_normal((2, 3, t, h, w)).astype(np.float32)
    diff, scale = _parity(path, x)
    assert scale > 1e-2  # the outputs carry signal, so the comparison means something
    assert diff < 1e-4 * max(1.0, scale)


@pytest.mark.parametrize("version", ["1", "2"])
def test_bundled_model_matches_onnx_runtime(version: str) -> None:
    path = default_repository() / "stb1" / version / "model.onnx"
    module = load_onnx_module(path)
    assert module.input_names == ("frames",)
    assert module.output_names == ("logits", "embedding")
    assert module.input_shapes == ((None, 3, 8, 160, 96),)
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 160, 96)).astype(np.float32)
    diff, scale = _parity(path, x)
    assert scale > 1.0 and diff < 1e-4


def test_weights_are_buffers_and_cast_with_the_module() -> None:
    module = load_onnx_module(default_repository() / "stb1" / "2" / "model.onnx")
    n_weights = sum(b.numel() for b in module.buffers())
    assert 0.6e6 < n_weights < 0.8e6  # x2plus1d_m: 0.68 M parameters
    module.to(torch.bfloat16)
    assert {b.dtype for b in module.buffers()} == {torch.bfloat16}


def test_schema_field_numbers_are_onnx_own() -> None:
    """Every field of the protobuf subset has the number and kind of onnx.proto's field."""
    from google.protobuf.descriptor import FieldDescriptor

    for message, fields in onnx_proto.SCHEMA.items():
        desc = getattr(onnx, message.split("_")[0]).DESCRIPTOR
        for nested in message.split("_")[1:]:
            desc = desc.nested_types_by_name[nested]
        for name, number, kind, repeated, _ in fields:
            if name == "sparse_initializer":  # read as opaque bytes: only counted
                assert desc.fields_by_name[name].number == number
                continue
            theirs = desc.fields_by_name[name]
            assert theirs.number == number, (message, name)
            assert theirs.is_repeated == repeated, (message, name)
            same_kind = theirs.type == kind or (
                theirs.type == FieldDescriptor.TYPE_ENUM and kind == FieldDescriptor.TYPE_INT32
            )
            assert same_kind, (message, name)


# --------------------------------------------------------------------------- refusals


def _graph_file(tmp_path: Path, nodes: list[Any], opset: int = 17, **inits: np.ndarray) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    initializers = [
        helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.ravel()) for k, v in inits.items()
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    return path


W = np.ones((2, 2, 3, 3), np.float32)


@pytest.mark.parametrize(
    ("nodes", "opset", "match"),
    [
        ([helper.make_node("Softmax", ["x"], ["y"])], 17, "operator Softmax is not supported"),
        (
            [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER")],
            17,
            "attribute auto_pad=b'SAME_UPPER' is not supported",
        ),
        (
            [helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 0, 1, 1])],
            17,
            r"attribute pads=\(0, 0, 1, 1\) is not supported",
        ),
        (
            [helper.make_node("Relu", ["x"], ["y"], alpha=0.1)],
            17,
            "attribute 'alpha' is not supported",
        ),
        (
            [helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])],
            17,
            r"optional outputs \['idx'\] are not supported",
        ),
        (
            [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], ceil_mode=1)],
            17,
            "attribute ceil_mode=1 is not supported",
        ),
        ([helper.make_node("Relu", ["x"], ["y"])], 18, "opset 18 is not supported"),
        ([helper.make_node("Relu", ["nowhere"], ["y"])], 17, "'nowhere' is not defined"),
        (
            [helper.make_node("Relu", ["x"], ["y"], domain="com.microsoft")],
            17,
            "domain 'com.microsoft'",
        ),
    ],
    ids=["op", "auto_pad", "pads", "attr", "indices", "ceil", "opset", "undef", "domain"],
)
def test_unsupported_graphs_are_refused_at_load(
    tmp_path: Path, nodes: list[Any], opset: int, match: str
) -> None:
    with pytest.raises(ModelError, match=match):
        load_onnx_module(_graph_file(tmp_path, nodes, opset, w=W))


def test_a_supported_small_graph_runs(tmp_path: Path) -> None:
    """The refusal graphs' shape, with supported attributes, loads and computes (the refusals
    above are about the attribute alone)."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    module = load_onnx_module(_graph_file(tmp_path, nodes, w=W))
    x = torch.randn(1, 2, 4, 4)
    want = torch.nn.functional.max_pool2d(
        torch.nn.functional.conv2d(x, torch.from_numpy(W), padding=1), 2
    )
    (got,) = module(x)
    assert torch.allclose(got, want)


def test_not_an_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not protobuf at all" * 10)
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_onnx_module(bad)
