"""MF-Net 3D: Multi-Fiber Networks (Chen et al., ECCV 2018).

Every residual unit is split into `num_fibers` parallel thin paths (group convolutions, the
"fibers"); a multiplexer (two 1x1x1 convolutions through a quarter of the unit's middle width,
added back residually) mixes information across fibers before them. Convolutions are
pre-activation ("BN-AC-CONV"). Layout as in the authors' `network/mfnet_3d.py`:

    conv1  3x5x5, 16, stride (1,2,2) -> BN-ReLU -> max pool 1x3x3 stride (1,2,2)
    conv2  3 units,  96 channels, first unit temporal stride 2
    conv3  4 units, 192 channels, first unit spatial stride 2
    conv4  6 units, 384 channels, first unit spatial stride 2
    conv5  3 units, 768 channels, first unit spatial stride 2
    BN-ReLU -> global average pool -> classifier

In each unit the first grouped convolution is 3x3x3 (the temporal one); the second is a dense
1x1x1 in the first unit of a stage (which also carries a strided 1x1x1 projection shortcut) and a
grouped 1x3x3 elsewhere. ~8.0M parameters at 400 classes, as published.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vidtag.nets.registry import register_model

Triple = tuple[int, int, int]

CHANNELS = (16, 96, 192, 384, 768)
BLOCKS = (3, 4, 6, 3)


class BnActConv(nn.Sequential):
    """Pre-activation convolution: BN -> ReLU -> Conv3d (no bias), 'same' padding."""

    def __init__(
        self, cin: int, cout: int, kernel: Triple, stride: Triple = (1, 1, 1), groups: int = 1
    ) -> None:
        pad = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
        super().__init__(
            nn.BatchNorm3d(cin),
            nn.ReLU(inplace=True),
            nn.Conv3d(cin, cout, kernel, stride, pad, groups=groups, bias=False),
        )


class MFUnit(nn.Module):
    """Multi-fiber unit: multiplexer (residual) -> two grouped convs, plus the unit shortcut."""

    def __init__(
        self, cin: int, cmid: int, cout: int, fibers: int, stride: Triple, first: bool
    ) -> None:
        super().__init__()
        cix = max(1, cmid // 4)
        self.multiplexer = nn.Sequential(
            BnActConv(cin, cix, (1, 1, 1)), BnActConv(cix, cin, (1, 1, 1))
        )
        self.conv_m1 = BnActConv(cin, cmid, (3, 3, 3), stride, groups=fibers)
        self.conv_m2 = (
            BnActConv(cmid, cout, (1, 1, 1))
            if first
            else BnActConv(cmid, cout, (1, 3, 3), groups=fibers)
        )
        self.shortcut: nn.Module | None = BnActConv(cin, cout, (1, 1, 1), stride) if first else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_m2(self.conv_m1(x + self.multiplexer(x)))
        return h + (x if self.shortcut is None else self.shortcut(x))


def _scaled(channels: Sequence[int], width: float, fibers: int) -> tuple[int, ...]:
    return tuple(max(fibers, round(c * width / fibers) * fibers) for c in channels)


class MFNet3D(nn.Module):
    """Input (N, 3, T, H, W) normalised RGB; output (logits (N, classes), embedding (N, E))."""

    def __init__(
        self,
        num_classes: int,
        width: float = 1.0,
        channels: Sequence[int] | None = None,
        num_fibers: int = 16,
        blocks: Sequence[int] = BLOCKS,
        dropout: float = 0.5,
        embedding: int | None = None,
    ) -> None:
        super().__init__()
        chans = tuple(channels) if channels is not None else _scaled(CHANNELS, width, num_fibers)
        if len(chans) != 5 or len(blocks) != 4:
            raise ValueError("MF-Net needs 5 channel counts (conv1..conv5) and 4 block counts")
        if any(c % num_fibers for c in chans):
            raise ValueError(f"every channel count must be a multiple of {num_fibers} fibers")
        self.conv1 = nn.Sequential(
            nn.Conv3d(3, chans[0], (3, 5, 5), (1, 2, 2), (1, 2, 2), bias=False),
            nn.BatchNorm3d(chans[0]),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        strides: tuple[Triple, ...] = ((2, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2))
        stages: list[nn.Module] = []
        for i, (n, stride) in enumerate(zip(blocks, strides, strict=True)):
            cin, cout = chans[i], chans[i + 1]
            stages.append(
                nn.Sequential(
                    *[
                        MFUnit(
                            cin if b == 0 else cout,
                            cout,  # MF-Net 3D: middle width == output width in every stage
                            cout,
                            num_fibers,
                            stride if b == 0 else (1, 1, 1),
                            first=b == 0,
                        )
                        for b in range(n)
                    ]
                )
            )
        self.stages = nn.Sequential(*stages)
        self.tail = nn.Sequential(nn.BatchNorm3d(chans[-1]), nn.ReLU(inplace=True))
        emb = embedding or chans[-1]
        self.project: nn.Module = nn.Identity() if emb == chans[-1] else nn.Linear(chans[-1], emb)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(emb, num_classes)
        self.embedding_size = emb
        # He init over fan-out: large enough that a fresh network responds to its input (PyTorch's
        # default shrinks it to nothing), damped enough that 2 residual sums per unit stay tame.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tail(self.stages(self.maxpool(self.conv1(x))))
        emb = self.project(x.mean(dim=(2, 3, 4)))
        return self.classifier(self.dropout(emb)), emb


@register_model("mfnet3d")
def mfnet3d(num_classes: int, **kw: Any) -> nn.Module:
    """MF-Net 3D (16 fibers, 768-d pooled embedding); `width`/`channels` build slimmer ones."""
    return MFNet3D(num_classes, **kw)
