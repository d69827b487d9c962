"""A clip split over decoders in different processes (SamplingSpec.share): the shares partition
the plan, and merged they are the clip decoded whole, frame for frame."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from media import encode_clip

from vidtag.decode import DecodeLimits, SamplingSpec, sample_frames
from vidtag.decode.planner import plan_frames
from vidtag.decode.pyav_backend import indexed
from vidtag.decode.result import DecodedClip
from vidtag.decode.shares import merge_shares, share_plan
from vidtag.errors import InvalidVideo, LimitExceeded
from vidtag.runtime.artifact import InputSpec
from vidtag.server.decode_pool import DecodePool, DecodePoolConfig

SPEC = SamplingSpec(frames=8, height=48, width=32, threads=1)


@pytest.fixture(scope="module")
def gops8(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """8 s, a keyframe a second, B-frames: 8 GOPs for 8 targets."""
    path = tmp_path_factory.mktemp("shares") / "gops8.mp4"
    return encode_clip(path, seconds=8.0, fps=12, gop=12).read_bytes()


def _shares(data: bytes, n: int, spec: SamplingSpec = SPEC) -> list[DecodedClip]:
    return [sample_frames(data, replace(spec, share=(i, n))) for i in range(n)]


def test_shares_partition_the_plan(gops8: bytes) -> None:
    with indexed(gops8, DecodeLimits()) as (_, _, _, index):
        plan = plan_frames(index, SPEC)
        for n in (2, 3, 8, 11):
            parts = [share_plan(index, plan, (i, n)) for i in range(n)]
            prefixes = [p.prefixes for p, _ in parts]
            assert sum(len(p) for p in prefixes) == len(plan.prefixes)
            assert {k: v for p in prefixes for k, v in p.items()} == plan.prefixes
            positions = sorted(q for _, pos in parts for q in pos)
            assert positions == list(range(len(plan.chosen)))
            for part, pos in parts:
                assert part.chosen == tuple(plan.chosen[q] for q in pos)
                assert part.targets == plan.targets
            # Balanced: 8 equal GOPs over n decoders, none empty while GOPs remain.
            assert sum(1 for p in prefixes if p) == min(n, len(plan.prefixes))


@pytest.mark.parametrize("n", [1, 2, 3, 12])
def test_merged_shares_are_the_whole_clip(gops8: bytes, n: int) -> None:
    whole = sample_frames(gops8, SPEC)
    parts = _shares(gops8, n)
    merged = merge_shares(parts)
    assert np.array_equal(merged.frames, whole.frames)
    assert merged.timestamps == whole.timestamps and merged.targets == whole.targets
    assert merged.mean_deviation == pytest.approx(whole.mean_deviation)
    assert merged.packets_planned == whole.packets_planned
    assert merged.frames_decoded == whole.frames_decoded
    assert merged.positions == () and merged.seconds == max(p.seconds for p in parts)
    if n > 8:  # more shares than GOPs: the spare ones decode nothing and are left out
        assert sum(1 for p in parts if not p.positions) == n - 8


def test_a_share_without_frames_is_stood_in_for_by_the_nearest(gops8: bytes) -> None:
    parts: list[DecodedClip | BaseException] = list(_shares(gops8, 4))
    lost = parts[1]
    assert isinstance(lost, DecodedClip)
    parts[1] = InvalidVideo("no frame of the video could be decoded")
    merged = merge_shares(parts)
    targets = np.asarray(merged.targets)
    for p in lost.positions:  # each lost target gets the decoded frame nearest it in time
        others = [q for q in range(len(targets)) if q not in lost.positions]
        near = min(others, key=lambda q: abs(merged.timestamps[q] - targets[p]))
        assert merged.timestamps[p] == merged.timestamps[near]
        assert np.array_equal(merged.frames[p], merged.frames[near])


def test_other_failures_fail_the_clip() -> None:
    boom = LimitExceeded("decoding took longer than the limit")
    with pytest.raises(LimitExceeded):
        merge_shares([InvalidVideo("x"), boom])
    first = InvalidVideo("not a readable video container: bad")
    with pytest.raises(InvalidVideo, match="not a readable"):
        merge_shares([first, InvalidVideo("other")])


def test_share_must_name_one_of_n() -> None:
    for share in ((1, 1), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="share"):
            SamplingSpec(share=share)


def test_idle_pool_workers_share_a_clip(gops8: bytes, tmp_path: Path) -> None:
    """Through the server's pool stage: an idle pool of 3 splits the clip 3 ways, the frames
    are the whole decode's; a garbage input fails the same way as undivided."""
    from vidtag.server.pipeline import pool_decode_stage

    model = SimpleNamespace(
        tagger=SimpleNamespace(spec=SPEC),
        meta=SimpleNamespace(input=InputSpec(8, 48, 32, (0.5,) * 3, (0.25,) * 3)),
    )

    async def run() -> tuple[DecodedClip, list[int], int]:
        pool = DecodePool(DecodePoolConfig(workers=3, warmup=False))
        await pool.start()
        try:
            stage = pool_decode_stage(pool, DecodeLimits(), None, shares=3)
            decoded = await stage(gops8, model, None)  # type: ignore[arg-type]
            clip = decoded.clip
            assert decoded.shares == 3  # what vidtag_decode_shares_total counts
            tasks = [w.done for w in pool._workers]
            unsplit = pool_decode_stage(pool, DecodeLimits(), None)
            assert (await unsplit(gops8, model, None)).shares == 1  # type: ignore[arg-type]
            with pytest.raises(InvalidVideo, match="not a readable video container"):
                await stage(b"garbage" * 100, model, None)  # type: ignore[arg-type]
            return clip, tasks, pool.restarts
        finally:
            await pool.stop()

    clip, tasks, restarts = asyncio.run(run())
    assert tasks == [1, 1, 1]  # one share each
    whole = sample_frames(gops8, SPEC)
    assert np.array_equal(clip.frames, whole.frames) and clip.timestamps == whole.timestamps
    assert clip.frames_decoded == whole.frames_decoded and restarts == 0
