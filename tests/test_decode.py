from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from media import encode_clip, red_centroid_x

from vidtag.decode import DecodeLimits, SamplingSpec, backends, sample_frames
from vidtag.errors import InvalidVideo, LimitExceeded


def test_returns_requested_frames_in_display_size(h264_clip: Path) -> None:
    clip = sample_frames(h264_clip, SamplingSpec(frames=8, height=64, width=32))
    assert clip.frames.shape == (8, 64, 32, 3) and clip.frames.dtype == np.uint8
    assert (clip.width, clip.height) == (160, 288)
    assert clip.codec == "h264" and clip.rotation == 0
    assert clip.duration == pytest.approx(4.0, abs=0.05)
    assert clip.keyframes == 4
    assert list(clip.timestamps) == sorted(clip.timestamps)


def test_bytes_and_path_give_same_frames(h264_clip: Path) -> None:
    spec = SamplingSpec(frames=4, height=64, width=32)
    a = sample_frames(h264_clip, spec)
    b = sample_frames(h264_clip.read_bytes(), spec)
    assert np.array_equal(a.frames, b.frames) and a.timestamps == b.timestamps


def test_keyframes_first_then_frames_right_after(h264_clip: Path) -> None:
    # A tradeoff no extension can meet: keyframes only, plus the frames right after them.
    spec = SamplingSpec(frames=8, height=64, width=32, policy="fast", tradeoff=1e9)
    clip = sample_frames(h264_clip, spec)
    assert clip.frames_decoded <= 4 * 4
    assert len(set(clip.timestamps)) == 8
    assert all(t % 1.0 < 0.3 for t in clip.timestamps)


def test_fast_decodes_less_than_exact(h264_clip: Path) -> None:
    fast = sample_frames(h264_clip, SamplingSpec(frames=8, height=64, width=32, policy="fast"))
    exact = sample_frames(h264_clip, SamplingSpec(frames=8, height=64, width=32, policy="exact"))
    assert fast.frames_decoded < exact.frames_decoded
    assert fast.mean_deviation <= 0.5  # never worse than half a GOP


def test_exact_hits_targets(h264_clip: Path) -> None:
    clip = sample_frames(h264_clip, SamplingSpec(frames=8, height=64, width=32, policy="exact"))
    assert clip.mean_deviation <= 0.5 / 25 + 1e-6
    assert clip.frames_decoded > 8


def test_frames_show_motion_in_order(h264_clip: Path) -> None:
    clip = sample_frames(h264_clip, SamplingSpec(frames=6, height=144, width=80, policy="exact"))
    xs = [red_centroid_x(f) for f in clip.frames]
    assert all(np.isfinite(xs)) and all(b > a for a, b in itertools.pairwise(xs))


def test_single_keyframe_clip_is_spread_by_forward_decoding(single_key_clip: Path) -> None:
    clip = sample_frames(single_key_clip, SamplingSpec(frames=8, height=64, width=32))
    assert clip.keyframes == 1
    # Worth decoding forward: the returned frames cover more than half of the clip.
    assert max(clip.timestamps) - min(clip.timestamps) > 2.0


def test_budget_caps_decoding(single_key_clip: Path) -> None:
    clip = sample_frames(single_key_clip, SamplingSpec(frames=8, height=64, width=32, budget=1.0))
    assert clip.frames_decoded <= 4


@pytest.mark.parametrize(
    "data", [b"", b"\x00" * 1000, b"not a video at all" * 50], ids=["empty", "zeros", "text"]
)
def test_garbage_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidVideo):
        sample_frames(data, SamplingSpec(frames=2, height=32, width=32))


def test_truncated_file_is_invalid_or_partial(h264_clip: Path) -> None:
    data = h264_clip.read_bytes()
    try:
        clip = sample_frames(data[: len(data) // 2], SamplingSpec(frames=4, height=32, width=32))
    except InvalidVideo as exc:
        assert str(exc)
    else:
        assert clip.frames.shape[0] == 4


def test_limits(h264_clip: Path) -> None:
    spec = SamplingSpec(frames=2, height=32, width=32)
    data = h264_clip.read_bytes()
    with pytest.raises(LimitExceeded, match="bytes"):
        sample_frames(data, spec, DecodeLimits(max_bytes=100))
    with pytest.raises(LimitExceeded, match="pixels"):
        sample_frames(data, spec, DecodeLimits(max_pixels=100 * 100))
    with pytest.raises(LimitExceeded, match="duration"):
        sample_frames(data, spec, DecodeLimits(max_duration_s=1.0))
    with pytest.raises(LimitExceeded, match="frames"):
        sample_frames(data, spec, DecodeLimits(max_packets=10))


def test_vp9_without_b_frames(clip_dir: Path) -> None:
    path = encode_clip(clip_dir / "vp9.webm", codec="libvpx-vp9", gop=25, seconds=2.0)
    clip = sample_frames(path, SamplingSpec(frames=4, height=64, width=32))
    assert clip.codec == "vp9" and clip.frames.shape == (4, 64, 32, 3)


def test_unknown_backend() -> None:
    assert "pyav" in backends()
    with pytest.raises(ValueError, match="unknown decode backend"):
        sample_frames(b"x", backend="nope")


def test_dense_mode_returns_consecutive_frames(h264_clip: Path) -> None:
    clip = sample_frames(h264_clip, SamplingSpec(frames=8, mode="dense", start=1.31))
    steps = np.diff(np.asarray(clip.timestamps))
    np.testing.assert_allclose(steps, 1 / 25, atol=1e-6)
    assert abs(clip.timestamps[0] - 1.32) < 0.021 and clip.mean_deviation < 0.021


def test_segments_mode_draws_one_point_per_segment(h264_clip: Path) -> None:
    a = SamplingSpec(frames=4, mode="segments", seed=1).targets(4.0)
    b = SamplingSpec(frames=4, mode="segments", seed=2).targets(4.0)
    assert a != b
    assert all(j <= t < j + 1 for j, t in enumerate(a))
    clip = sample_frames(h264_clip, SamplingSpec(frames=4, mode="segments", seed=1, policy="exact"))
    assert clip.mean_deviation < 0.021
