from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from media import encode_clip, red_centroid_x

from vidtag.decode import DecodeLimits, SamplingSpec, backends, sample_frames
from vidtag.decode.index import PacketIndex
from vidtag.decode.planner import MS_PER_FRAME, MS_PER_KB, packet_costs, packet_ms, plan_frames
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
    spec = SamplingSpec(frames=8, height=64, width=32, policy="fast", tradeoff=1e9, fill=1)
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


def test_budget_ms_caps_forward_decoding(single_key_clip: Path) -> None:
    def decoded(budget_ms: float) -> int:
        spec = SamplingSpec(frames=8, height=64, width=32, budget_ms=budget_ms)
        return sample_frames(single_key_clip, spec).frames_decoded

    # The keyframe is decoded whatever the cap; forward decoding grows with it.
    assert decoded(0.0) == 1
    assert 1 < decoded(2.0) < decoded(1e6)


def test_packet_cost_model_charges_pixels_and_bytes() -> None:
    small, big = _index(30, 30.0, [0]), _index(30, 30.0, [0])
    big.width, big.height = 1080, 1920
    ms_small, ms_big = packet_ms(small), packet_ms(big)
    fixed = MS_PER_KB + MS_PER_FRAME  # the 1 KB inter packets of _index, and any frame's share
    assert ms_big[1] - fixed == pytest.approx(4 * (ms_small[1] - fixed), rel=0.1)
    assert ms_small[0] - ms_small[1] == pytest.approx(9 * MS_PER_KB)  # 9 KB more
    # Relative to its keyframe an inter frame of a bigger picture costs more in time (the
    # fixed work per pixel grows, the keyframe's bytes do not), not in size; AV1's fixed
    # work is cheaper.
    assert ms_big[1] / ms_big[0] > ms_small[1] / ms_small[0]
    assert packet_costs(big)[1] == packet_costs(small)[1]
    small.codec = "libdav1d"
    assert packet_ms(small)[1] < ms_small[1]


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


def _index(n: int, fps: float, keys: list[int]) -> PacketIndex:
    """A synthetic packet index: `n` frames in presentation = decode order, inter packets a
    tenth of a keyframe."""
    is_key = np.zeros(n, dtype=bool)
    is_key[keys] = True
    return PacketIndex(
        pts_s=np.arange(n) / fps, origin_s=0.0, is_key=is_key,
        sizes=np.where(is_key, 10_000, 1_000).astype(np.int64), duration=n / fps, fps=fps,
        width=540, height=960, codec="h264", source="tables", fetch=lambda i: None,
    )  # fmt: skip


@pytest.mark.parametrize("fill", [1, 4, 8])
def test_fill_spreads_frames_of_a_sparse_gop_within_its_window(fill: int) -> None:
    # One keyframe for 30 s and no extension worth its cost: every frame after the first is
    # a fill, each the frame nearest its target within `fill` packets past the prefix.
    index = _index(900, 30.0, [0])
    plan = plan_frames(index, SamplingSpec(frames=8, tradeoff=1e9, fill=fill))
    assert plan.chosen == tuple(range(0, 7 * fill + 1, fill))
    assert plan.packets_to_decode == 7 * fill + 1


def test_fill_stays_inside_its_gop() -> None:
    index = _index(60, 30.0, [0, 10, 20, 30, 40, 50])  # 2 s, six GOPs, 8 targets
    plan = plan_frames(index, SamplingSpec(frames=8, tradeoff=1e9, fill=30))
    gop = [i // 10 for i in plan.chosen]
    assert len(set(plan.chosen)) == 8 and all(i < 60 for i in plan.chosen)
    assert all(plan.prefixes[g * 10] <= 10 for g in set(gop))


def test_an_mp4_is_probed_no_further_than_its_header(
    h264_clip: Path, clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MP4 with a video track: FFmpeg's stream probe stops at the movie box (probesize 32),
    and the frames are those of the full probe; other containers get the full probe; an
    open that leaves no sized video stream is done again with the full probe."""
    import av

    from vidtag.decode import pyav_backend

    opened: list[dict[str, str]] = []
    real_open = av.open

    def spy(*args: object, **kw: dict[str, str]) -> object:
        opened.append(dict(kw["options"]))
        return real_open(*args, **kw)  # type: ignore[call-overload]

    spec = SamplingSpec(frames=4, height=32, width=32)
    full = sample_frames(h264_clip.read_bytes(), spec)  # before the spy: reference frames
    webm = encode_clip(clip_dir / "probe.webm", codec="libvpx-vp9", seconds=1.0)
    monkeypatch.setattr(pyav_backend.av, "open", spy)
    got = sample_frames(h264_clip.read_bytes(), spec)
    assert [o.get("probesize") for o in opened] == ["32"]
    assert np.array_equal(got.frames, full.frames) and got.timestamps == full.timestamps

    opened.clear()
    sample_frames(webm, spec)
    assert [o.get("probesize") for o in opened] == [None]

    class Sizeless:  # what a header that names no frame size would leave
        streams = SimpleNamespace(video=())
        closed = False

        def close(self) -> None:
            Sizeless.closed = True

    def header_only_fails(*args: object, **kw: dict[str, str]) -> object:
        opened.append(dict(kw["options"]))
        if kw["options"].get("probesize"):
            return Sizeless()
        return real_open(*args, **kw)  # type: ignore[call-overload]

    opened.clear()
    monkeypatch.setattr(pyav_backend.av, "open", header_only_fails)
    again = sample_frames(h264_clip.read_bytes(), spec)
    assert [o.get("probesize") for o in opened] == ["32", None] and Sizeless.closed
    assert np.array_equal(again.frames, full.frames)
