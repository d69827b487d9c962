"""One clip decoded by several decoders in different processes: each plans the whole clip (the
plan is deterministic), decodes one group of its GOPs, and returns those frames with their
target positions; `merge_shares` puts the clip back together.

NVDEC decoders in threads of one process do not speed each other up (Python holds them), so a
lone request on an idle GPU server is split over idle decoder processes instead: every share
pays the index and the plan again (a few ms of CPU, in parallel), and decodes and converts
only its part of the keyframes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from vidtag.decode.index import PacketIndex
from vidtag.decode.planner import Plan, packet_costs, packet_ms, split_gops
from vidtag.decode.result import DecodedClip
from vidtag.decode.spec import SamplingSpec
from vidtag.errors import InvalidVideo, LimitExceeded


def share_plan(
    index: PacketIndex, plan: Plan, share: tuple[int, int]
) -> tuple[Plan, tuple[int, ...]]:
    """The part of `plan` that share (i, n) decodes (its GOPs, its chosen frames; the clip's
    targets) and the positions of those frames in `plan.chosen`: empty when the clip has
    fewer GOP groups than n."""
    i, n = share
    if n == 1:
        return plan, tuple(range(len(plan.chosen)))
    groups = split_gops(sorted(plan.prefixes.items()), packet_ms(index), n)
    mine = dict(groups[i]) if i < len(groups) else {}
    starts = np.array(sorted(plan.prefixes), dtype=np.int64)
    gop_of = {
        j: int(starts[np.searchsorted(starts, j, side="right") - 1]) for j in set(plan.chosen)
    }
    positions = tuple(p for p, j in enumerate(plan.chosen) if gop_of[j] in mine)
    costs = packet_costs(index)
    part = Plan(
        prefixes=mine,
        targets=plan.targets,
        chosen=tuple(plan.chosen[p] for p in positions),
        cost=float(sum(costs[start : start + length].sum() for start, length in mine.items())),
    )
    return part, positions


def empty_share(index: PacketIndex, plan: Plan, spec: SamplingSpec, seconds: float) -> DecodedClip:
    """The result of a share with no GOP to decode (a clip with fewer GOP groups than shares)."""
    return DecodedClip(
        frames=np.empty((0, spec.height, spec.width, 3), np.uint8),
        timestamps=(),
        targets=plan.targets,
        frames_decoded=0,
        packets_planned=0,
        corrupt_packets=0,
        mean_deviation=0.0,
        width=index.width,
        height=index.height,
        duration=index.duration,
        fps=index.fps,
        codec=index.codec,
        rotation=0,
        keyframes=int(index.is_key.sum()),
        seconds=seconds,
    )


def merge_shares(parts: Sequence[DecodedClip | BaseException]) -> DecodedClip:
    """The whole clip from its shares' results (each with the clip's targets, its frames and
    their positions). A share that failed with InvalidVideo (none of its frames decoded) is
    stood in for by the decoded frames nearest its targets in time, as a frame that fails
    inside one decoder is; any other failure (a limit, a crashed worker, a deadline), or no
    frame at all, raises the first such error."""
    for part in parts:
        undecodable = isinstance(part, InvalidVideo) and not isinstance(part, LimitExceeded)
        if isinstance(part, BaseException) and not undecodable:
            raise part
    clips = [p for p in parts if isinstance(p, DecodedClip) and len(p.frames)]
    if not clips:
        error = next((p for p in parts if isinstance(p, BaseException)), None)
        raise error or InvalidVideo("no frame of the video could be decoded")
    first = clips[0]
    targets = np.asarray(first.targets, dtype=np.float64)
    frames = np.empty((len(targets), *first.frames.shape[1:]), dtype=first.frames.dtype)
    stamps = np.full(len(targets), np.nan)
    for clip in clips:
        at = list(clip.positions or range(len(clip.frames)))  # () : a whole clip
        frames[at] = clip.frames
        stamps[at] = clip.timestamps
    have = np.flatnonzero(~np.isnan(stamps))
    for p in np.flatnonzero(np.isnan(stamps)):
        near = have[np.argmin(np.abs(stamps[have] - targets[p]))]
        frames[p], stamps[p] = frames[near], stamps[near]
    return replace(
        first,
        frames=frames,
        timestamps=tuple(float(t) for t in stamps),
        frames_decoded=sum(c.frames_decoded for c in clips),
        packets_planned=sum(c.packets_planned for c in clips),
        corrupt_packets=sum(c.corrupt_packets for c in clips),
        mean_deviation=float(np.mean(np.abs(stamps - targets))),
        # The slowest share, one that planned only (more shares than GOPs) included.
        seconds=max(p.seconds for p in parts if isinstance(p, DecodedClip)),
        positions=(),
    )
