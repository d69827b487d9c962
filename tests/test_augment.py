"""Batched augmentation, normalisation and the LR schedule of the trainer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from vidtag.runtime.artifact import InputSpec
from vidtag.runtime.preprocess import preprocess
from vidtag.tags import TAG_INDEX, TAGS
from vidtag.train.augment import BatchAugmenter, jitter, normalise
from vidtag.train.trainer import lr_factor


def _labels(*tags: str) -> np.ndarray:
    y = np.zeros(len(TAGS), np.float32)
    for t in tags:
        y[TAG_INDEX[t]] = 1
    return y


def test_normalise_matches_the_serving_preprocess() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 4, 10, 6, 3), dtype=np.uint8)
    spec = InputSpec(frames=4, height=10, width=6, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    got = normalise(torch.from_numpy(frames), spec.mean, spec.std).numpy()
    want = np.stack([preprocess(f, spec) for f in frames])
    assert got.shape == (2, 3, 4, 10, 6)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize(
    ("mask", "flip", "before", "after"),
    [
        (0, lambda f: f[:, :, ::-1], ("move_left", "zoom_in"), ("move_right", "zoom_in")),
        (1, lambda f: f[:, ::-1], ("move_up", "blink"), ("move_down", "blink")),
        (
            2,
            lambda f: f[::-1],
            ("move_left", "move_up", "zoom_out", "rotate"),
            ("move_right", "move_down", "zoom_in", "rotate"),
        ),
    ],
)
def test_each_transform_moves_pixels_and_swaps_the_labels_it_mirrors(
    mask: int, flip: object, before: tuple[str, ...], after: tuple[str, ...]
) -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 3, 5, 4, 3), dtype=np.uint8)
    y = np.stack([_labels(*before), _labels(*before)])
    masks = [torch.zeros(2, dtype=torch.bool) for _ in range(3)]
    masks[mask][0] = True  # transform the first sample only
    x2, y2, none = BatchAugmenter(TAGS).apply(torch.from_numpy(frames), torch.from_numpy(y), *masks)
    assert none is None
    np.testing.assert_array_equal(x2[0].numpy(), flip(frames[0]))  # type: ignore[operator]
    np.testing.assert_array_equal(x2[1].numpy(), frames[1])
    np.testing.assert_array_equal(y2[0].numpy(), _labels(*after))
    np.testing.assert_array_equal(y2[1].numpy(), y[1])


def test_random_augmentation_is_seeded_and_mixes_samples() -> None:
    aug = BatchAugmenter(TAGS)
    frames = torch.arange(64 * 2 * 2 * 2 * 3, dtype=torch.int64).reshape(64, 2, 2, 2, 3)
    y = torch.from_numpy(np.stack([_labels("move_left")] * 64))
    a = aug.random(frames, y, torch.Generator().manual_seed(5))
    b = aug.random(frames, y, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    changed = (a[0] != frames).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 64


def test_lr_schedule_warms_up_then_anneals() -> None:
    assert lr_factor(0.0, 0.15) == pytest.approx(1 / 25)
    assert lr_factor(0.15, 0.15) == pytest.approx(1.0)
    assert lr_factor(1.0, 0.15) == pytest.approx(1e-4)
    xs = [lr_factor(p, 0.15) for p in np.linspace(0.15, 1.0, 20)]
    assert all(a >= b for a, b in itertools.pairwise(xs))


def test_jitter_crops_the_same_box_in_every_frame_and_permutes_colours() -> None:
    gen = torch.Generator().manual_seed(3)
    # a bright square that moves right by 4 px a frame on a dark background, channel 0 only
    x = torch.zeros(64, 3, 4, 32, 32)
    for t in range(4):
        x[:, 0, t, 12:20, 4 + 4 * t : 12 + 4 * t] = 1.0
    y, none = jitter(x, gen)
    assert y.shape == x.shape and none is None
    lit = y.amax(dim=(3, 4))  # (N, 3, T): which channel carries the square
    channel = lit[:, :, 0].argmax(dim=1)
    assert len(set(channel.tolist())) > 1  # colours permuted across samples
    assert torch.all(lit.argmax(dim=1) == channel[:, None])  # the same channel in every frame
    cols = torch.arange(32, dtype=torch.float32)
    mass = y[torch.arange(64), channel]  # (N, T, H, W)
    cx = (mass.sum(dim=2) * cols).sum(dim=2) / mass.sum(dim=(2, 3))
    assert torch.all(cx[:, 1:] > cx[:, :-1])  # still moving right: one box for the whole clip
    assert not torch.allclose(y[:, :, 0].amax(dim=1), x[:, :, 0].amax(dim=1))  # cropped


def test_object_masks_follow_the_frames_through_flips_reversal_and_crops() -> None:
    """A mask drawn where a bright block is stays on the block after every transform."""
    n, t, h, w = 48, 3, 32, 24
    frames = torch.zeros(n, t, h, w, 3, dtype=torch.uint8)
    masks = torch.zeros(n, t, 2, h // 4, w // 4, dtype=torch.uint8)
    rng = np.random.default_rng(2)
    for i in range(n):
        for k in range(t):  # one 8x8 block per frame, anywhere on the 4-px grid
            r, c = rng.integers(0, h // 4 - 1), rng.integers(0, w // 4 - 1)
            frames[i, k, 4 * r : 4 * r + 8, 4 * c : 4 * c + 8] = 255
            masks[i, k, 1, r : r + 2, c : c + 2] = 255
    y = torch.zeros(n, len(TAGS))
    gen = torch.Generator().manual_seed(4)
    f2, _, m2 = BatchAugmenter(TAGS).random(frames, y, gen, masks)
    assert m2 is not None and not torch.equal(m2, masks)  # some samples were transformed
    lit = f2[..., 0].float().unflatten(2, (h // 4, 4)).unflatten(4, (w // 4, 4)).mean((3, 5))
    assert torch.equal(lit > 0, m2[:, :, 1] > 0) and not m2[:, :, 0].any()
    x = frames.permute(0, 4, 1, 2, 3).float() / 255  # (N, 3, T, H, W)
    x3, m3 = jitter(x, gen, masks=masks)
    assert m3 is not None and m3.dtype == torch.uint8 and m3.shape == masks.shape
    cover = x3.amax(1).unflatten(2, (h // 4, 4)).unflatten(4, (w // 4, 4)).mean((3, 5))
    # the cropped mask and the cropped block agree wherever either is clearly present
    clear = (cover > 0.75) | (m3[:, :, 1].float() / 255 > 0.75)
    assert torch.allclose(cover[clear], m3[:, :, 1].float()[clear] / 255, atol=0.3)
