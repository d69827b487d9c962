"""R(2+1)D in the VMZ layout: shapes, the middle-width formula, and the Caffe2 checkpoint loader
against files written the way Python 2 cPickle wrote VMZ's `.pkl` (protocol 2, numpy.core
globals, array bytes as py2 `str`)."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vidtag.nets import create_model
from vidtag.nets.r2plus1d import (
    Caffe2CheckpointError,
    R2Plus1D,
    blob_names,
    load_caffe2_checkpoint,
    mid_channels,
)
from vidtag.runtime.artifact import InputSpec, load_meta
from vidtag.train.export import export_artifact

CLIP = (1, 3, 4, 32, 32)


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b


def _py2_array(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a, dtype="<f4")
    shape = b"".join(b"J" + struct.pack("<i", d) for d in a.shape)
    dtype_state = b"(K\x03" + _py2_str(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + _py2_str(b"b")
        + b"\x87R(K\x01("
        + shape
        + b"tcnumpy\ndtype\n"
        + _py2_str(b"f4")
        + b"K\x00K\x01\x87R"
        + dtype_state
        + b"\x89"
        + _py2_str(a.tobytes())
        + b"tb"
    )


def write_py2_pkl(path: Path, blobs: dict[str, np.ndarray]) -> Path:
    """{"blobs": {name: float32 array}} as Python 2.7 cPickle (protocol 2) + numpy 1.x wrote it."""
    body = b"".join(_py2_str(k.encode()) + _py2_array(v) for k, v in blobs.items())
    path.write_bytes(b"\x80\x02}" + _py2_str(b"blobs") + b"}(" + body + b"us.")
    return path


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BN statistics, so loading them is visible in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def _blobs_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
    state = model.state_dict()
    return {b: state[k].numpy().copy() for b, k in blob_names(model).items()}


@pytest.fixture(scope="module")
def kinetics18() -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    """An R(2+1)D-18 with a 400-way FC and its blobs (what `r2.5d_d18_*` Kinetics files hold)."""
    torch.manual_seed(0)
    model = _randomise(create_model("r2plus1d_18", num_classes=400), seed=1)
    return model, _blobs_of(model)


@pytest.mark.parametrize("name", ["r2plus1d_18", "r2plus1d_34"])
def test_output_shapes_and_embedding_size(name: str) -> None:
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        logits, emb = model(torch.randn(*CLIP))
    assert logits.shape == (1, 5) and emb.shape == (1, 512) and model.embedding_size == 512
    if name != "r2plus1d_18":
        return
    proj = create_model(name, num_classes=5, embedding=128, dropout=0.0).eval()
    with torch.no_grad():
        logits, emb = proj(torch.randn(*CLIP))
    assert logits.shape == (1, 5) and emb.shape == (1, 128) and proj.embedding_size == 128


def test_reversing_time_changes_the_output() -> None:
    torch.manual_seed(0)
    model = create_model("r2plus1d_18", num_classes=3).eval()
    x = torch.randn(*CLIP)
    with torch.no_grad():
        a, ea = model(x)
        b, eb = model(x.flip(2))
    assert not torch.allclose(a, b, atol=1e-5) and not torch.allclose(ea, eb, atol=1e-5)


def test_vmz_middle_widths_and_layer_table() -> None:
    # int(3*N_in*N_out*9 / (N_in*9 + 3*N_out)) from VMZ's VideoModelBuilder.add_conv ('2.5d').
    table = {(64, 64): 144, (64, 128): 230, (128, 128): 288, (128, 256): 460}
    table |= {(256, 256): 576, (256, 512): 921, (512, 512): 1152}
    assert {k: mid_channels(*k) for k in table} == table
    model = create_model("r2plus1d_34", num_classes=400)
    assert isinstance(model, R2Plus1D)
    assert [len(s) for s in model.stages] == [3, 4, 6, 3]
    names = blob_names(model)
    state = model.state_dict()

    def shape(blob: str) -> tuple[int, ...]:
        return tuple(state[names[blob]].shape)

    assert shape("conv1_middle_w") == (45, 3, 1, 7, 7) and shape("conv1_w") == (64, 45, 3, 1, 1)
    assert shape("comp_0_conv_1_middle_w") == (144, 64, 1, 3, 3)
    # conv3_1: first conv 64->128 (230), the second 128->128 (288; torchvision would use 230).
    assert shape("comp_3_conv_1_middle_w") == (230, 64, 1, 3, 3)
    assert shape("comp_3_conv_2_middle_w") == (288, 128, 1, 3, 3)
    assert shape("comp_3_conv_1_w") == (128, 230, 3, 1, 1)
    assert shape("comp_13_conv_1_middle_w") == (921, 256, 1, 3, 3)
    assert shape("last_out_L400_w") == (400, 512) and shape("last_out_L400_b") == (400,)
    projections = sorted(b for b in names if b.startswith("shortcut_projection") and "_w" in b)
    assert projections == [f"shortcut_projection_{i}_w" for i in (13, 3, 7)]
    assert shape("shortcut_projection_7_w") == (256, 128, 1, 1, 1)
    bn_blobs = {b: names[f"comp_15_spatbn_2_{b}"] for b in ("s", "b", "rm", "riv")}
    assert bn_blobs == {
        "s": "stages.3.2.bn2.weight",
        "b": "stages.3.2.bn2.bias",
        "rm": "stages.3.2.bn2.running_mean",
        "riv": "stages.3.2.bn2.running_var",  # Caffe2 `_riv` is the running variance
    }
    blk = model.stages[1][0]
    assert blk.conv1.temporal.stride == (2, 1, 1) and blk.conv1.spatial.stride == (1, 2, 2)
    assert blk.project is not None and blk.project[0].stride == (2, 2, 2)
    bn = blk.bn1
    assert bn.eps == 1e-3 and bn.momentum == 0.1
    # every tensor but BN's counters has a blob
    assert set(state) - set(names.values()) == {k for k in state if "num_batches" in k}
    assert len(names) == len(set(names.values()))


def test_checkpoint_file_round_trip(
    kinetics18: tuple[torch.nn.Module, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    src, blobs = kinetics18
    with_momentum = dict(blobs)
    for b in ("comp_0_conv_1_middle_w", "conv1_w", "last_out_L400_w", "comp_7_spatbn_2_s"):
        with_momentum[b + "_momentum"] = np.zeros_like(blobs[b])
    path = write_py2_pkl(tmp_path / "r2.5d_d18_l8.pkl", with_momentum)

    torch.manual_seed(123)
    fresh = create_model("r2plus1d_18", num_classes=400).eval()
    x = torch.randn(*CLIP)
    with torch.no_grad():
        before = fresh(x)[0]
    report = load_caffe2_checkpoint(fresh, path)
    with torch.no_grad():
        want, got = src(x), fresh(x)
    assert not torch.equal(before, want[0])
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    assert len(report.loaded) == len(blobs) and len(report.ignored_momentum) == 4
    assert report.missing == report.unexpected == report.skipped_fc == report.untouched == ()
    # str paths and already-loaded dicts work too
    load_caffe2_checkpoint(fresh, str(path))
    load_caffe2_checkpoint(fresh, {"blobs": with_momentum})


def test_missing_blob_raises_and_leaves_model_unchanged(
    kinetics18: tuple[torch.nn.Module, dict[str, np.ndarray]],
) -> None:
    _, blobs = kinetics18
    model = create_model("r2plus1d_18", num_classes=400)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    partial = {k: v for k, v in blobs.items() if k != "comp_5_spatbn_1_middle_riv"}
    with pytest.raises(Caffe2CheckpointError, match=r"missing blobs.*comp_5_spatbn_1_middle_riv"):
        load_caffe2_checkpoint(model, partial)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = load_caffe2_checkpoint(model, partial, strict=False)
    assert report.missing == ("comp_5_spatbn_1_middle_riv",)


def test_unexpected_blob_raises(kinetics18: tuple[torch.nn.Module, dict[str, np.ndarray]]) -> None:
    _, blobs = kinetics18
    model = create_model("r2plus1d_18", num_classes=400)
    extra = {**blobs, "comp_8_conv_1_w": np.zeros((512, 1152, 3, 1, 1), np.float32)}
    extra["lonely_momentum"] = np.zeros(1, np.float32)  # momentum of no known blob: unexpected
    with pytest.raises(Caffe2CheckpointError, match=r"unexpected blobs.*comp_8_conv_1_w"):
        load_caffe2_checkpoint(model, extra)
    report = load_caffe2_checkpoint(model, extra, strict=False)
    assert set(report.unexpected) == {"comp_8_conv_1_w", "lonely_momentum"}


def test_wrong_shape_raises_even_when_not_strict(
    kinetics18: tuple[torch.nn.Module, dict[str, np.ndarray]],
) -> None:
    _, blobs = kinetics18
    model = create_model("r2plus1d_18", num_classes=400)
    # torchvision's width for the second conv of conv3_1
    bad = {**blobs, "comp_2_conv_2_middle_w": np.zeros((230, 128, 1, 3, 3), np.float32)}
    for strict in (True, False):
        with pytest.raises(Caffe2CheckpointError, match=r"comp_2_conv_2_middle_w \(230, 128"):
            load_caffe2_checkpoint(model, bad, strict=strict)


def test_skip_fc_initialises_a_model_with_other_classes(
    kinetics18: tuple[torch.nn.Module, dict[str, np.ndarray]],
) -> None:
    src, blobs = kinetics18
    model = create_model("r2plus1d_18", num_classes=22).eval()
    with pytest.raises(Caffe2CheckpointError, match="skip_fc=True"):
        load_caffe2_checkpoint(model, blobs)
    fc = model.classifier.weight.detach().clone()
    report = load_caffe2_checkpoint(model, blobs, skip_fc=True)
    assert set(report.skipped_fc) == {"last_out_L400_w", "last_out_L400_b"}
    assert set(report.untouched) == {"classifier.weight", "classifier.bias"}
    assert torch.equal(model.classifier.weight, fc)
    x = torch.randn(*CLIP)
    with torch.no_grad():
        assert torch.equal(src(x)[1], model(x)[1])  # same backbone, same embedding
    proj = create_model("r2plus1d_18", num_classes=22, embedding=64)
    with pytest.raises(Caffe2CheckpointError, match="skip_fc=True"):
        load_caffe2_checkpoint(proj, blobs)
    report = load_caffe2_checkpoint(proj, blobs, skip_fc=True)
    assert set(report.untouched) == {
        "embed.weight",
        "embed.bias",
        "classifier.weight",
        "classifier.bias",
    }


def test_depth_mismatch_is_refused(
    kinetics18: tuple[torch.nn.Module, dict[str, np.ndarray]],
) -> None:
    _, blobs = kinetics18
    with pytest.raises(Caffe2CheckpointError, match=r"missing blobs.*comp_8_"):
        load_caffe2_checkpoint(create_model("r2plus1d_34", num_classes=400), blobs)


def test_pickle_with_foreign_globals_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.getenv, ("HOME",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": Evil()}}, protocol=2))
    model = create_model("r2plus1d_18", num_classes=2)
    with pytest.raises(Caffe2CheckpointError, match="refusing to unpickle"):
        load_caffe2_checkpoint(model, path)
    path.write_bytes(write_py2_pkl(tmp_path / "ok.pkl", {"conv1_w": np.zeros(3)}).read_bytes()[:-9])
    with pytest.raises(Caffe2CheckpointError, match="not a readable pickle"):
        load_caffe2_checkpoint(model, path)


def test_blob_names_rejects_other_networks() -> None:
    with pytest.raises(TypeError):
        blob_names(create_model("x2plus1d_xs", num_classes=2))


def test_onnx_export_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _randomise(create_model("r2plus1d_18", num_classes=22), seed=2)
    spec = InputSpec(frames=4, height=32, width=32, mean=(0.45,) * 3, std=(0.25,) * 3)
    art = export_artifact(
        tmp_path, name="r21d", version="1", model=net, arch="r2plus1d_18", input_spec=spec
    )
    meta = load_meta(art)
    assert meta.arch == "r2plus1d_18" and meta.embedding_size == 512
    assert meta.provenance["onnx_parity_max_abs_diff"] < 1e-3
