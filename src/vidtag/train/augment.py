"""Batched, label-aware augmentation and normalisation in torch (runs where the frames are).

Each transform is drawn per sample with probability 1/2: horizontal flip (swaps move_left and
move_right), vertical flip (swaps move_up and move_down) and time reversal (swaps both pairs and
zoom_in with zoom_out). Normalisation matches `vidtag.runtime.preprocess.preprocess` exactly.
`jitter` adds label-free transforms on normalised clips: a crop of 80-100 % of each side resized
back (one box for all frames, so motion, zoom and scene tags are unchanged) and a permutation of
the colour channels (no STB-1 tag depends on colour). Object masks ((N, T, K, h, w) coverage on
a coarser grid) follow the frames through every geometric transform.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

HFLIP_SWAPS = (("move_left", "move_right"),)
VFLIP_SWAPS = (("move_up", "move_down"),)
REVERSE_SWAPS = (("move_left", "move_right"), ("move_up", "move_down"), ("zoom_in", "zoom_out"))


def swap_permutation(
    pairs: tuple[tuple[str, str], ...], tags: Sequence[str], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Column order that exchanges each pair's label columns (identity elsewhere)."""
    index = {t: i for i, t in enumerate(tags)}
    perm = list(range(len(tags)))
    for a, b in pairs:
        if a in index and b in index:
            perm[index[a]], perm[index[b]] = index[b], index[a]
    return torch.tensor(perm, dtype=torch.long, device=device)


class BatchAugmenter:
    """Applies the three transforms to (N, T, H, W, 3) uint8 frames and (N, C) labels."""

    def __init__(self, tags: Sequence[str], device: torch.device | str = "cpu") -> None:
        self.h_perm = swap_permutation(HFLIP_SWAPS, tags, device)
        self.v_perm = swap_permutation(VFLIP_SWAPS, tags, device)
        self.t_perm = swap_permutation(REVERSE_SWAPS, tags, device)

    def apply(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        hflip: torch.Tensor,
        vflip: torch.Tensor,
        reverse: torch.Tensor,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Apply the transforms selected by the (N,) boolean selections."""
        for sel, dim, mdim, perm in (
            (hflip, 3, 4, self.h_perm),
            (vflip, 2, 3, self.v_perm),
            (reverse, 1, 1, self.t_perm),
        ):
            x = torch.where(sel.view(-1, 1, 1, 1, 1), x.flip(dim), x)
            y = torch.where(sel.view(-1, 1), y[:, perm], y)
            if masks is not None:
                masks = torch.where(sel.view(-1, 1, 1, 1, 1), masks.flip(mdim), masks)
        return x, y, masks

    def random(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        gen: torch.Generator,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        sel = (torch.rand(3, len(x), generator=gen, device=gen.device) < 0.5).to(x.device)
        return self.apply(x, y, sel[0], sel[1], sel[2], masks)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, T, H, W, 3) uint8 -> (N, 3, T, H, W) float32, as `preprocess` does per clip."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    inv = 1.0 / torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    f = x.permute(0, 4, 1, 2, 3).to(torch.float32) * (1.0 / 255.0)
    return ((f - m) * inv).contiguous()


def jitter(
    x: torch.Tensor,
    gen: torch.Generator,
    min_side: float = 0.8,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random crop-resize and channel permutation of normalised (N, 3, T, H, W) clips; the
    same crop of `masks` (N, T, K, h, w) uint8 (the box is in normalised coordinates)."""
    n = len(x)
    r = torch.rand(n, 3, generator=gen, device=gen.device).to(x.device, x.dtype)
    side = min_side + (1.0 - min_side) * r[:, 0]
    theta = torch.zeros(n, 3, 4, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = side  # x (width)
    theta[:, 1, 1] = side  # y (height)
    theta[:, 2, 2] = 1.0  # t unchanged
    theta[:, 0, 3] = (1.0 - side) * (2.0 * r[:, 1] - 1.0)
    theta[:, 1, 3] = (1.0 - side) * (2.0 * r[:, 2] - 1.0)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if masks is not None:
        m = masks.permute(0, 2, 1, 3, 4).to(x.dtype)  # (N, K, T, h, w)
        mgrid = F.affine_grid(theta, list(m.shape), align_corners=False)
        m = F.grid_sample(m, mgrid, mode="bilinear", padding_mode="zeros", align_corners=False)
        masks = m.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 1, 3, 4)
    perms = torch.tensor(
        [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]], device=x.device
    )
    pick = torch.randint(0, 6, (n,), generator=gen, device=gen.device).to(x.device)
    order = perms[pick].view(n, 3, 1, 1, 1).expand_as(x)
    return torch.gather(x, 1, order), masks
