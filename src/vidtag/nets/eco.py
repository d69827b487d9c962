"""ECO: Efficient Convolutional Network for Online Video Understanding (Zolfaghari et al., 2018).

One frame per segment (`SamplingSpec(mode="segments")`) goes through a shared 2D stem,
BN-Inception up to inception-3c (96 channels at 1/8 resolution, 28x28 for 224 input). The per-frame
maps are stacked along time and a 3D ResNet-18 tail (res3..res5, 3x3x3 convolutions, temporal and
spatial stride 2 in res4a/res5a) reasons over the whole clip: ECO-Lite. ECO-Full adds a parallel 2D
branch (the rest of BN-Inception, inception-3c..5b, per frame, averaged over time) and
concatenates both before the classifier. Layer table as in the authors' Caffe
`models_ECO_{Lite,Full}/kinetics/deploy.prototxt`:

    conv1 7x7/2 64, max 3/2, conv2 1x1 64 + 3x3 192, max 3/2 (ceil)
    3a [64 | 64>64 | 64>96>96 | avg>32]  3b [64 | 64>96 | 64>96>96 | avg>64]
    3c double-3x3 branch: 1x1 64 > 3x3 96  ->  3D input
    res3a 3x3x3 128; res3b; res4a/b 256 (stride 2, 3x3x3 projection); res5a/b 512 -> pool (512)
    Full: 3c [3x3 128>160/2 | (96)>96/2 | max/2]  4a..4d  4e [128>192/2 | 192>256>256/2 | max/2]
          5a, 5b -> per-frame pool, mean over time (1024) ++ 3D (512) -> 1536

The 3D tail is pre-activation: a block adds its two convolutions to its raw input (or to the
strided 3x3x3 projection of its activated input) and BN-ReLU follows the sum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vidtag.nets.registry import register_model

# Inception module widths: (1x1, 3x3 reduce, 3x3, double reduce, double 3x3, pool proj, pool).
# 1x1 == 0 marks a reduction module (stride 2, max-pool branch without projection).
_INCEPTION: dict[str, tuple[int, int, int, int, int, int, str]] = {
    "3a": (64, 64, 64, 64, 96, 32, "avg"),
    "3b": (64, 64, 96, 64, 96, 64, "avg"),
    "3c": (0, 128, 160, 64, 96, 0, "max"),
    "4a": (224, 64, 96, 96, 128, 128, "avg"),
    "4b": (192, 96, 128, 96, 128, 128, "avg"),
    "4c": (160, 128, 160, 128, 160, 128, "avg"),
    "4d": (96, 128, 192, 160, 192, 128, "avg"),
    "4e": (0, 128, 192, 192, 256, 0, "max"),
    "5a": (352, 192, 320, 160, 224, 128, "avg"),
    "5b": (352, 192, 320, 192, 224, 128, "max"),
}


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Inception(nn.Module):
    """BN-Inception module; a reduction module (`c1x1 == 0`) halves the resolution.

    With `shared_head` the double-3x3 branch's 1x1 + first 3x3 are computed outside (ECO shares
    them with the 3D input at inception-3c) and `forward` takes their output as `mid`.
    """

    def __init__(
        self, cin: int, widths: tuple[int, ...], pool: str, shared_head: bool = False
    ) -> None:
        super().__init__()
        c1, r3, c3, rd, cd, cp = widths
        self.reduce = c1 == 0
        s = 2 if self.reduce else 1
        self.b1: nn.Module | None = None if self.reduce else _conv_bn(cin, c1, 1)
        self.b3 = nn.Sequential(_conv_bn(cin, r3, 1), _conv_bn(r3, c3, 3, s))
        self.double_head: nn.Module | None = (
            None if shared_head else nn.Sequential(_conv_bn(cin, rd, 1), _conv_bn(rd, cd, 3))
        )
        self.double_tail = _conv_bn(cd, cd, 3, s)
        if self.reduce:
            # Padded max pool keeps this branch the size of the strided convs for odd sizes too.
            self.pool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            p = nn.AvgPool2d(3, 1, 1) if pool == "avg" else nn.MaxPool2d(3, 1, 1)
            self.pool = nn.Sequential(p, _conv_bn(cin, cp, 1))
        self.out_channels = (0 if self.reduce else c1) + c3 + cd + (cin if self.reduce else cp)

    def forward(self, x: torch.Tensor, mid: torch.Tensor | None = None) -> torch.Tensor:
        if mid is None:
            assert self.double_head is not None
            mid = self.double_head(x)
        ys = [] if self.b1 is None else [self.b1(x)]
        ys += [self.b3(x), self.double_tail(mid), self.pool(x)]
        return torch.cat(ys, dim=1)


class Stem2D(nn.Module):
    """BN-Inception to inception-3b, plus inception-3c's double-3x3 head (the 3D net's input)."""

    def __init__(self, w: Callable[[int], int]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(3, w(64), 7, 2),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            _conv_bn(w(64), w(64), 1),
            _conv_bn(w(64), w(192), 3),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        )
        self.inc3a = Inception(w(192), _widths("3a", w), "avg")
        self.inc3b = Inception(self.inc3a.out_channels, _widths("3b", w), "avg")
        rd, cd = _widths("3c", w)[3:5]
        self.head3c = nn.Sequential(_conv_bn(self.inc3b.out_channels, rd, 1), _conv_bn(rd, cd, 3))
        self.out_channels = cd
        self.b_channels = self.inc3b.out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (F, 3, H, W) -> (inception-3b output, 3c double-3x3 head output)."""
        b = self.inc3b(self.inc3a(self.body(x)))
        return b, self.head3c(b)


def _widths(name: str, w: Callable[[int], int]) -> tuple[int, ...]:
    return tuple(w(c) if c else 0 for c in _INCEPTION[name][:6])


class PreActBlock3D(nn.Module):
    """BN-ReLU -> 3x3x3 conv (stride) -> BN-ReLU -> 3x3x3 conv, + input or strided projection."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.act = nn.Sequential(nn.BatchNorm3d(cin), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.mid = nn.Sequential(nn.BatchNorm3d(cout), nn.ReLU(inplace=True))
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.down: nn.Module | None = (
            nn.Conv3d(cin, cout, 3, stride, 1, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(x)
        h = self.conv2(self.mid(self.conv1(a)))
        return h + (x if self.down is None else self.down(a))


class Res3D(nn.Module):
    """res3..res5 of a 3D ResNet-18 over stacked frame features: (N, C, T, h, w) -> (N, 512)."""

    def __init__(self, cin: int, widths: tuple[int, int, int]) -> None:
        super().__init__()
        c3, c4, c5 = widths
        self.res3a = nn.Conv3d(cin, c3, 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(
            PreActBlock3D(c3, c3),
            PreActBlock3D(c3, c4, 2),
            PreActBlock3D(c4, c4),
            PreActBlock3D(c4, c5, 2),
            PreActBlock3D(c5, c5),
        )
        self.tail = nn.Sequential(nn.BatchNorm3d(c5), nn.ReLU(inplace=True))
        self.out_channels = c5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.blocks(self.res3a(x))).mean(dim=(2, 3, 4))


class ECO(nn.Module):
    """Input (N, 3, T, H, W) normalised RGB, one frame per segment; any T.

    Output (logits (N, classes), embedding (N, E)): E = 512 (Lite) or 1536 (Full) at width 1.
    """

    def __init__(
        self, num_classes: int, full: bool = False, dropout: float = 0.5, width: float = 1.0
    ) -> None:
        super().__init__()

        def w(c: int) -> int:
            return max(4, round(c * width / 4) * 4)

        self.stem = Stem2D(w)
        self.net3d = Res3D(self.stem.out_channels, (w(128), w(256), w(512)))
        emb = self.net3d.out_channels
        self.net2d: nn.ModuleList | None = None
        if full:
            inc3c = Inception(self.stem.b_channels, _widths("3c", w), "max", shared_head=True)
            mods: list[Inception] = [inc3c]
            for name in ("4a", "4b", "4c", "4d", "4e", "5a", "5b"):
                mods.append(Inception(mods[-1].out_channels, _widths(name, w), _INCEPTION[name][6]))
            self.net2d = nn.ModuleList(mods)
            emb += mods[-1].out_channels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(emb, num_classes)
        self.embedding_size = emb
        for m in self.modules():  # He init: a fresh network passes its input on, not just biases
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, c, t, h, wd = x.shape
        frames = x.transpose(1, 2).reshape(-1, c, h, wd)  # (N*T, 3, H, W), frame-major per clip
        b, mid = self.stem(frames)
        f = mid.reshape(-1, t, *mid.shape[1:]).transpose(1, 2)  # (N, C, T, h, w)
        emb = self.net3d(f)
        if self.net2d is not None:
            y = self.net2d[0](b, mid)
            for m in self.net2d[1:]:
                y = m(y)
            per_frame = y.mean(dim=(2, 3))
            emb = torch.cat([per_frame.reshape(-1, t, per_frame.shape[1]).mean(1), emb], 1)
        return self.classifier(self.dropout(emb)), emb


@register_model("eco_lite")
def eco_lite(num_classes: int, **kw: Any) -> nn.Module:
    """ECO-Lite: BN-Inception stem to 3c + 3D ResNet-18 res3..res5 (512-d embedding)."""
    return ECO(num_classes, full=False, **kw)


@register_model("eco_full")
def eco_full(num_classes: int, **kw: Any) -> nn.Module:
    """ECO-Full: ECO-Lite plus the per-frame BN-Inception 3c..5b branch (1536-d embedding)."""
    return ECO(num_classes, full=True, **kw)
