"""(2+1)D-lite: per-frame 2D convolutions factorised with temporal convolutions.

Built for a 2-core CPU budget: the spatial convolutions see each frame alone, and a temporal
(3x1x1) convolution after every stage compares the same location across frames, so the network
can tell direction of motion, zoom and blinking apart (frame order matters), which averaging
per-frame features cannot.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vidtag.nets.registry import register_model


def _bn_act(c: int) -> list[nn.Module]:
    return [nn.BatchNorm3d(c), nn.ReLU(inplace=True)]


class SpatioTemporalBlock(nn.Module):
    """Spatial 3x3 conv (optionally strided) -> temporal 3x1x1 conv, with a residual path."""

    def __init__(self, cin: int, cout: int, stride: int, convs: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for k in range(convs):
            layers += [
                nn.Conv3d(
                    cin if k == 0 else cout,
                    cout,
                    (1, 3, 3),
                    (1, stride if k == 0 else 1, stride if k == 0 else 1),
                    (0, 1, 1),
                    bias=False,
                ),
                *_bn_act(cout),
            ]
        self.spatial = nn.Sequential(*layers)
        self.temporal = nn.Sequential(
            nn.Conv3d(cout, cout, (3, 1, 1), 1, (1, 0, 0), bias=False), nn.BatchNorm3d(cout)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.spatial(x)
        return self.act(y + self.temporal(y))


def _spatial(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [
        nn.Conv3d(
            cin, cout, (1, 3, 3), (1, stride, stride), (0, dilation, dilation),
            dilation=(1, dilation, dilation), bias=False,
        ),
        *_bn_act(cout),
    ]  # fmt: skip


class ObjectBranch(nn.Module):
    """Per-frame maps of `kinds` object kinds at stride 8, from the stride-4 features.

    The trunk resolves a 10-25 px shape only at stride 16, after three 3x3 convolutions, too
    few to tell a star from a circle; this branch spends four more at strides 4 and 8 (the last
    dilated: a ~70 px receptive field). A kind's clip logit is its map's maximum over frames
    and cells, so the renderer's masks supervise exactly what is served (`forward_aux`).
    """

    def __init__(self, cin: int, width: int, kinds: int) -> None:
        super().__init__()
        self.maps = nn.Sequential(
            *_spatial(cin, 32),
            *_spatial(32, width, stride=2),
            *_spatial(width, width),
            *_spatial(width, width, dilation=2),
            nn.Conv3d(width, kinds, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps(x)


class TrackHead(nn.Module):
    """Evidence for the other classes from the object maps' course over the frames.

    Motion, zoom and blinking are where an object's map goes, how large it grows and whether
    it flickers; three 3x3x3 convolutions over the maps' probabilities (stride 8, a reach of
    +-3 cells, ~2 frame steps of a move) and average+max pooling give logits that are added
    to the trunk's. On cached STB-1 maps of a trained branch, such a head alone scored the
    motion tags at validation mAP ~0.9 after one minute of training on one CPU core.
    """

    def __init__(self, kinds: int, classes: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(kinds, width, 3, 1, 1, bias=False),
            *_bn_act(width),
            nn.Conv3d(width, width, 3, (1, 2, 2), 1, bias=False),
            *_bn_act(width),
            nn.Conv3d(width, 2 * width, 3, 1, 1, bias=False),
            *_bn_act(2 * width),
        )
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        h = self.features(torch.sigmoid(maps))
        return self.fc(torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1))


class X2Plus1D(nn.Module):
    """Input (N, 3, T, H, W) normalised RGB; output (logits (N, classes), embedding (N, E)).

    With `objects` = K > 0, an `ObjectBranch` scores the first K classes (the object kinds)
    and the classifier the rest; with `tracks` too, a `TrackHead` adds to the rest."""

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...] = (16, 24, 48, 96, 160),
        embedding: int = 256,
        dropout: float = 0.2,
        pool: str = "avgmax",
        strides: tuple[int, ...] = (2, 2, 2, 2),
        convs: tuple[int, ...] = (1, 1, 1, 1),
        aux: int = 0,
        objects: int = 0,
        object_width: int = 64,
        tracks: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, widths[0], (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False),
            *_bn_act(widths[0]),
        )
        self.stages = nn.Sequential(
            *[
                SpatioTemporalBlock(widths[i], widths[i + 1], strides[i], convs[i])
                for i in range(len(widths) - 1)
            ]
        )
        self.project = nn.Sequential(
            nn.Conv3d(widths[-1], embedding, 1, bias=False), *_bn_act(embedding)
        )
        if pool not in ("avg", "avgmax"):
            raise ValueError(f"pool must be 'avg' or 'avgmax', not {pool!r}")
        self.pool = pool
        # Max pooling keeps the evidence of a small object that average pooling dilutes.
        pooled = embedding * (2 if pool == "avgmax" else 1)
        self.embed = nn.Linear(pooled, embedding) if pool == "avgmax" else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embedding, num_classes - objects)
        self.embedding_size = embedding
        # Per-frame object maps read from the first stage at stride 4 (`forward_aux`): with
        # `objects`, the served ObjectBranch (maps at stride 8); else, with `aux`, a
        # training-only head (maps at stride 4) that `forward` (what is exported) never runs.
        stride, self.aux_after = 2, 0
        while stride < 4 and self.aux_after < len(strides):
            stride *= strides[self.aux_after]
            self.aux_after += 1
        self.aux_stride = stride
        self.aux_head: nn.Module | None = None
        self.objects: ObjectBranch | None = None
        if objects:
            if objects > num_classes:
                raise ValueError(f"objects ({objects}) must be <= num_classes ({num_classes})")
            if aux not in (0, objects):
                raise ValueError(f"aux ({aux}) must be 0 or objects ({objects})")
            if stride != 4:
                raise ValueError(f"the object branch needs stride-4 features, not {stride}")
            self.objects = ObjectBranch(widths[self.aux_after], object_width, objects)
            self.aux_stride = 8
        elif aux:
            c = widths[self.aux_after]
            self.aux_head = nn.Sequential(
                nn.Conv3d(c, 32, (1, 3, 3), 1, (0, 1, 1)),
                nn.ReLU(inplace=True),
                nn.Conv3d(32, aux, 1),
            )
        if tracks and not objects:
            raise ValueError("tracks read the object maps: they need objects > 0")
        self.tracks = TrackHead(objects, num_classes - objects) if tracks else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.objects is not None:
            logits, emb, _ = self.forward_aux(x)
            return logits, emb
        return self._head(self.stages(self.stem(x)))

    def forward_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, embedding, object maps (N, K, T, H / stride, W / stride) logits)."""
        mapper = self.objects if self.objects is not None else self.aux_head
        if mapper is None:
            raise ValueError("built without an aux head (aux=0) or object branch")
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i == self.aux_after:
                maps = mapper(x)
            x = stage(x)
        if self.aux_after == len(self.stages):
            maps = mapper(x)
        logits, emb = self._head(x)
        if self.tracks is not None:
            logits = logits + self.tracks(maps)
        if self.objects is not None:
            logits = torch.cat([maps.amax(dim=(2, 3, 4)), logits], dim=1)
        return logits, emb, maps

    def _head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.project(x)
        emb = x.mean(dim=(2, 3, 4))
        if self.pool == "avgmax":
            emb = self.embed(torch.cat([emb, x.amax(dim=(2, 3, 4))], dim=1))
        return self.classifier(self.dropout(emb)), emb


@register_model("x2plus1d_s")
def x2plus1d_s(num_classes: int, **kw: Any) -> nn.Module:
    """The default CPU model: ~0.3 GFLOPs at 8x160x96."""
    return X2Plus1D(num_classes, **kw)


@register_model("x2plus1d_m")
def x2plus1d_m(num_classes: int, **kw: Any) -> nn.Module:
    """Wider, stage 1 unstrided (for small objects); measured on 2 CPU cores: 3x the inference
    and 6x the training time of `_s`."""
    return X2Plus1D(num_classes, widths=(24, 32, 64, 128, 192), strides=(1, 2, 2, 2), **kw)


@register_model("x2plus1d_d")
def x2plus1d_d(num_classes: int, **kw: Any) -> nn.Module:
    """`_s` with two spatial convolutions in stages 1-3 (deeper where objects are resolved)."""
    return X2Plus1D(num_classes, convs=(2, 2, 2, 1), **kw)


@register_model("x2plus1d_o")
def x2plus1d_o(num_classes: int, objects: int = 6, **kw: Any) -> nn.Module:
    """`_s` with an `ObjectBranch` scoring the first `objects` classes (STB-1: the six shapes;
    all of them when there are fewer); train it with `--aux-masks` so the renderer's masks
    supervise the branch's maps."""
    return X2Plus1D(num_classes, objects=min(objects, num_classes), **kw)


@register_model("x2plus1d_ot")
def x2plus1d_ot(num_classes: int, objects: int = 6, **kw: Any) -> nn.Module:
    """`x2plus1d_o` with a `TrackHead`: the object maps' course over the frames adds to the
    other classes' logits (STB-1: motion, zoom, blink)."""
    return x2plus1d_o(num_classes, objects, tracks=True, **kw)


@register_model("x2plus1d_xs")
def x2plus1d_xs(num_classes: int, **kw: Any) -> nn.Module:
    """Half-width variant for tests and very small budgets."""
    return X2Plus1D(num_classes, widths=(8, 12, 24, 48, 80), embedding=128, **kw)
