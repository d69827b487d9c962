"""Batched, label-aware augmentation and normalisation in torch (runs where the frames are).

Each transform is drawn per sample with probability 1/2: horizontal flip (swaps move_left and
move_right), vertical flip (swaps move_up and move_down) and time reversal (swaps both pairs and
zoom_in with zoom_out). Normalisation matches `vidtag.runtime.preprocess.preprocess` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the transforms selected by the (N,) boolean masks."""
        for mask, dim, perm in (
            (hflip, 3, self.h_perm),
            (vflip, 2, self.v_perm),
            (reverse, 1, self.t_perm),
        ):
            x = torch.where(mask.view(-1, 1, 1, 1, 1), x.flip(dim), x)
            y = torch.where(mask.view(-1, 1), y[:, perm], y)
        return x, y

    def random(
        self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks = torch.rand(3, len(x), generator=gen, device=gen.device) < 0.5
        return self.apply(x, y, masks[0].to(x.device), masks[1].to(x.device), masks[2].to(x.device))


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, T, H, W, 3) uint8 -> (N, 3, T, H, W) float32, as `preprocess` does per clip."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    inv = 1.0 / torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    f = x.permute(0, 4, 1, 2, 3).to(torch.float32) * (1.0 / 255.0)
    return ((f - m) * inv).contiguous()
