"""R(2+1)D-18/34 in the layout of Facebook's VMZ (Caffe2) models, and a loader for their `.pkl`
checkpoints (Tran et al. 2018, "A Closer Look at Spatiotemporal Convolutions").

Every 3x3x3 convolution is factorised into a 1x3x3 spatial conv to M channels, BN, ReLU and a
3x1x1 temporal conv, with M chosen so the pair has the parameters of the full 3D conv:
M = floor(3*9*N_in*N_out / (9*N_in + 3*N_out)), computed per conv from its own in/out width
(so the second conv of conv3_1 has 288, not the 230 of the first: torchvision's R(2+1)D uses the
block's input width for both and cannot load these checkpoints). The stem is the fixed
conv1_middle (1x7x7, 45 channels, spatial stride 2) + conv1 (3x1x1 to 64), with no max pool.
conv3_1, conv4_1 and conv5_1 stride 2 in time and space (their temporal convs and 1x1x1
shortcut projections); the head is a global average pool and one FC. BN matches Caffe2's
SpatialBN as VMZ configures it: epsilon 1e-3, running averages kept with weight 0.9 on the old
value (PyTorch momentum 0.1).
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from vidtag.errors import ModelError
from vidtag.nets.registry import register_model

WIDTHS = (64, 128, 256, 512)
STEM_MIDDLE = 45


def mid_channels(cin: int, cout: int, t: int = 3, d: int = 3) -> int:
    """VMZ's middle width of a (2+1)D conv replacing a t x d x d 3D conv from cin to cout."""
    return (t * d * d * cin * cout) // (d * d * cin + t * cout)


def _bn(c: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(c, eps=1e-3, momentum=0.1)


class Conv2Plus1D(nn.Module):
    """1x3x3 conv (spatial stride) -> BN -> ReLU -> 3x1x1 conv (temporal stride); no final BN."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        st, ss = stride
        self.mid = mid_channels(cin, cout)
        self.spatial = nn.Conv3d(cin, self.mid, (1, 3, 3), (1, ss, ss), (0, 1, 1), bias=False)
        self.spatial_bn = _bn(self.mid)
        self.relu = nn.ReLU(inplace=True)
        self.temporal = nn.Conv3d(self.mid, cout, (3, 1, 1), (st, 1, 1), (1, 0, 0), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal(self.relu(self.spatial_bn(self.spatial(x))))


class BasicBlock(nn.Module):
    """Two (2+1)D convs with BN; a 1x1x1 conv + BN projects the shortcut when the shape changes.
    `stride` is (temporal, spatial) and applies to the first conv and the projection."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.conv1 = Conv2Plus1D(cin, cout, stride)
        self.bn1 = _bn(cout)
        self.conv2 = Conv2Plus1D(cout, cout)
        self.bn2 = _bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.project: nn.Sequential | None = None
        if cin != cout or stride != (1, 1):
            st, ss = stride
            self.project = nn.Sequential(
                nn.Conv3d(cin, cout, 1, (st, ss, ss), bias=False), _bn(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.project is None else self.project(x)))


class R2Plus1D(nn.Module):
    """Input (N, 3, T, H, W) normalised RGB; output (logits (N, classes), embedding (N, E)).

    `layers`: blocks per stage conv2_x..conv5_x. `temporal_stride`: time stride of conv3_1,
    conv4_1 and conv5_1 (VMZ turns the last ones off for clips shorter than 4 and 8 frames; blob
    shapes do not depend on it). `embedding`: None keeps the 512-d pooled feature as the
    embedding (and the FC loadable from a checkpoint); an int adds a Linear projection to that
    size in front of the classifier.
    """

    def __init__(
        self,
        num_classes: int,
        layers: tuple[int, int, int, int] = (2, 2, 2, 2),
        embedding: int | None = None,
        dropout: float = 0.2,
        temporal_stride: tuple[int, int, int] = (2, 2, 2),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(
                spatial=nn.Conv3d(3, STEM_MIDDLE, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
                spatial_bn=_bn(STEM_MIDDLE),
                spatial_relu=nn.ReLU(inplace=True),
                temporal=nn.Conv3d(STEM_MIDDLE, WIDTHS[0], (3, 1, 1), 1, (1, 0, 0), bias=False),
                bn=_bn(WIDTHS[0]),
                relu=nn.ReLU(inplace=True),
            )
        )
        strides = [(1, 1)] + [(t, 2) for t in temporal_stride]
        stages: list[nn.Module] = []
        cin = WIDTHS[0]
        for n, cout, stride in zip(layers, WIDTHS, strides, strict=True):
            blocks = [BasicBlock(cin, cout, stride)]
            blocks += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.embed: nn.Module = nn.Identity() if embedding is None else nn.Linear(cin, embedding)
        self.embedding_size = cin if embedding is None else embedding
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.embedding_size, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def projects_embedding(self) -> bool:
        return not isinstance(self.embed, nn.Identity)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stages(self.stem(x))
        emb = self.embed(x.mean(dim=(2, 3, 4)))
        return self.classifier(self.dropout(emb)), emb


@register_model("r2plus1d_18")
def r2plus1d_18(num_classes: int, **kw: Any) -> nn.Module:
    """R(2+1)D-18 (~31M parameters); loads VMZ `r2.5d_d18_*` checkpoints."""
    return R2Plus1D(num_classes, layers=(2, 2, 2, 2), **kw)


@register_model("r2plus1d_34")
def r2plus1d_34(num_classes: int, **kw: Any) -> nn.Module:
    """R(2+1)D-34 (~63M parameters); loads VMZ `r2.5d_d34_*` / `r2plus1d_34_*` checkpoints."""
    return R2Plus1D(num_classes, layers=(3, 4, 6, 3), **kw)


# --------------------------------------------------------------------------- Caffe2 checkpoints

_BN_SUFFIXES = (("s", "weight"), ("b", "bias"), ("rm", "running_mean"), ("riv", "running_var"))
_FC_BLOB = re.compile(r"last_out_L\d+_[wb]")
MOMENTUM_SUFFIX = "_momentum"


class Caffe2CheckpointError(ModelError):
    """A VMZ checkpoint does not fit the model (missing, unexpected or misshapen blobs) or holds
    something other than arrays."""


def _conv_blob(out: dict[str, str], blob: str, key: str) -> None:
    out[f"{blob}_w"] = f"{key}.weight"


def _bn_blobs(out: dict[str, str], blob: str, key: str) -> None:
    # Caffe2 SpatialBN's `_riv` is the running *variance* (input/output "var" of the op), despite
    # the name; `_siv` (saved inverse std) is a training-time output and never checkpointed.
    for suffix, attr in _BN_SUFFIXES:
        out[f"{blob}_{suffix}"] = f"{key}.{attr}"


def blob_names(model: nn.Module) -> dict[str, str]:
    """VMZ blob name -> state_dict key, for every tensor a VMZ checkpoint provides.

    Blocks are numbered `comp_{i}` across stages (R(2+1)D-18: 0-7, projections at 2, 4, 6;
    -34: 0-15, projections at 3, 7, 13). BN `num_batches_tracked` has no blob. The FC
    `last_out_L{num_classes}` is left out when the model projects its embedding.
    """
    if not isinstance(model, R2Plus1D):
        raise TypeError(f"blob_names needs an R2Plus1D, not {type(model).__name__}")
    out: dict[str, str] = {}
    _conv_blob(out, "conv1_middle", "stem.spatial")
    _bn_blobs(out, "conv1_middle_spatbn_relu", "stem.spatial_bn")
    _conv_blob(out, "conv1", "stem.temporal")
    _bn_blobs(out, "conv1_spatbn_relu", "stem.bn")
    comp = 0
    for si, stage in enumerate(model.stages.children()):
        for bi, block in enumerate(stage.children()):
            assert isinstance(block, BasicBlock)
            key = f"stages.{si}.{bi}"
            for j in (1, 2):
                _conv_blob(out, f"comp_{comp}_conv_{j}_middle", f"{key}.conv{j}.spatial")
                _bn_blobs(out, f"comp_{comp}_spatbn_{j}_middle", f"{key}.conv{j}.spatial_bn")
                _conv_blob(out, f"comp_{comp}_conv_{j}", f"{key}.conv{j}.temporal")
                _bn_blobs(out, f"comp_{comp}_spatbn_{j}", f"{key}.bn{j}")
            if block.project is not None:
                _conv_blob(out, f"shortcut_projection_{comp}", f"{key}.project.0")
                _bn_blobs(out, f"shortcut_projection_{comp}_spatbn", f"{key}.project.1")
            comp += 1
    if not model.projects_embedding:
        fc = f"last_out_L{model.classifier.out_features}"
        out[f"{fc}_w"] = "classifier.weight"
        out[f"{fc}_b"] = "classifier.bias"
    return out


@dataclass(frozen=True)
class LoadReport:
    """What `load_caffe2_checkpoint` did. `missing`/`unexpected` are non-empty only with
    strict=False; `untouched` lists state_dict keys left as they were (no blob loaded)."""

    loaded: tuple[str, ...]
    ignored_momentum: tuple[str, ...]
    skipped_fc: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    untouched: tuple[str, ...]


# A VMZ .pkl (Python 2 cPickle, protocol 2) holds only a dict of numpy arrays; refuse any other
# global so a tampered file cannot run code. Python 2 era numpy names live in numpy._core now.
_SAFE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class _BlobUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str, /) -> Any:
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core.") :]
        if (module, name) not in _SAFE_GLOBALS:
            raise Caffe2CheckpointError(
                f"refusing to unpickle {module}.{name}: a VMZ checkpoint holds only numpy arrays"
            )
        return super().find_class(module, name)


def read_caffe2_pickle(path: str | os.PathLike[str] | BinaryIO) -> dict[str, np.ndarray]:
    """The blob dict of a VMZ `.pkl` (`{"blobs": {...}}` or the bare mapping)."""
    try:
        if isinstance(path, (str, os.PathLike)):
            with Path(path).open("rb") as f:
                data = _BlobUnpickler(f, encoding="latin1").load()
        else:
            data = _BlobUnpickler(path, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError) as e:
        raise Caffe2CheckpointError(f"{path}: not a readable pickle: {e}") from e
    return _blobs_of(data, str(path))


def _blobs_of(data: Any, where: str) -> dict[str, np.ndarray]:
    if isinstance(data, Mapping) and "blobs" in data:
        data = data["blobs"]
    if not isinstance(data, Mapping):
        raise Caffe2CheckpointError(f"{where}: expected a dict of blobs, got {type(data).__name__}")
    out: dict[str, np.ndarray] = {}
    for k, v in data.items():
        name = k.decode("latin1") if isinstance(k, bytes) else str(k)
        out[name] = np.asarray(v)
    return out


def _listing(title: str, names: list[str], limit: int = 30) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"{title} ({len(names)}): {', '.join(names[:limit])}{more}"


def load_caffe2_checkpoint(
    model: nn.Module,
    path_or_dict: str | os.PathLike[str] | Mapping[str, Any],
    *,
    strict: bool = True,
    skip_fc: bool = False,
) -> LoadReport:
    """Copy a VMZ checkpoint's blobs into `model` (an R2Plus1D of the same depth), in place.

    Checks everything before copying anything, so a failed load leaves the model unchanged.
    Raises Caffe2CheckpointError on any shape mismatch, and (with strict) on missing or
    unexpected blobs. Blobs `<blob>_momentum` (SGD momentum that training checkpoints carry) are
    ignored when `<blob>` is a weight the checkpoint layout has; `skip_fc` ignores the
    checkpoint's `last_out_L*` FC (e.g. Kinetics-400) and keeps the model's own classifier,
    which a model with an embedding projection always needs.
    """
    if isinstance(path_or_dict, (str, os.PathLike)):
        blobs = read_caffe2_pickle(path_or_dict)
        where = str(path_or_dict)
    else:
        blobs = _blobs_of(path_or_dict, "checkpoint dict")
        where = "checkpoint dict"
    names = blob_names(model)
    assert isinstance(model, R2Plus1D)
    if model.projects_embedding and not skip_fc:
        raise Caffe2CheckpointError(
            "the model projects its embedding, so its classifier has no VMZ counterpart: "
            "pass skip_fc=True"
        )
    if skip_fc:
        names = {b: k for b, k in names.items() if not _FC_BLOB.fullmatch(b)}

    def known(blob: str) -> bool:
        return blob in names or _FC_BLOB.fullmatch(blob) is not None

    to_load: list[str] = []
    skipped: list[str] = []
    momentum: list[str] = []
    unexpected: list[str] = []
    for blob in blobs:
        if blob in names:
            to_load.append(blob)
        elif skip_fc and _FC_BLOB.fullmatch(blob):
            skipped.append(blob)
        elif blob.endswith(MOMENTUM_SUFFIX) and known(blob[: -len(MOMENTUM_SUFFIX)]):
            momentum.append(blob)
        else:
            unexpected.append(blob)
    missing = [b for b in names if b not in blobs]

    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    bad_shapes: list[str] = []
    bad_values: list[str] = []
    for b in to_load:
        want = tuple(state[names[b]].shape)
        if tuple(blobs[b].shape) != want:
            bad_shapes.append(f"{b} {tuple(blobs[b].shape)} vs model {names[b]} {want}")
            continue
        try:
            tensors[b] = torch.from_numpy(np.asarray(blobs[b], dtype=np.float32))
        except (TypeError, ValueError):
            bad_values.append(f"{b} ({blobs[b].dtype})")
    problems = []
    if bad_values:
        problems.append(_listing("non-numeric blobs", bad_values))
    if bad_shapes:
        problems.append(_listing("shape mismatches", bad_shapes))
    if strict and missing:
        problems.append(_listing("missing blobs", missing))
    if strict and unexpected:
        problems.append(_listing("unexpected blobs", unexpected))
    if problems:
        fc_in_ckpt = sorted({b[:-2] for b in unexpected if _FC_BLOB.fullmatch(b)})
        if fc_in_ckpt and not skip_fc:
            problems.append(
                f"the checkpoint's classifier is {', '.join(fc_in_ckpt)} but the model has "
                f"last_out_L{model.classifier.out_features}: pass skip_fc=True to keep the "
                "model's own classifier"
            )
        raise Caffe2CheckpointError(f"{where} does not fit the model:\n  " + "\n  ".join(problems))

    with torch.no_grad():
        for b, t in tensors.items():
            state[names[b]].copy_(t)
    loaded_keys = {names[b] for b in to_load}
    untouched = [k for k in state if k not in loaded_keys and not k.endswith("num_batches_tracked")]
    return LoadReport(
        loaded=tuple(to_load),
        ignored_momentum=tuple(momentum),
        skipped_fc=tuple(skipped),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        untouched=tuple(untouched),
    )
