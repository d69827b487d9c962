"""GOP-aware frame planning: which packet prefix of which GOP to decode for the targets.

Decoding is sequential inside a GOP, so a plan is a prefix length per GOP. Two estimates of a
packet's cost: relative, its size against the clip's mean keyframe plus a fixed overhead (the
units of `tradeoff` and `budget`, and what the bundled models were trained with), and absolute,
its decode time on a reference core (a per-pixel part every frame pays, motion compensation,
deblocking and output, plus a per-byte part, entropy decoding; the units of `budget_ms`).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from vidtag.decode.index import PacketIndex
from vidtag.decode.spec import SamplingSpec

PACKET_OVERHEAD = 0.08  # relative cost of an empty inter frame, in keyframe equivalents
# Reference time of one decoded frame in the sampler, on one core of this project's 2-core CI
# machine (FFmpeg's software decoders in PyAV 18, one decoder thread, the frame's output
# included): ns per pixel, ms per KB of packet and ms per frame, fitted by non-negative least
# squares on the single-threaded `sample_frames` wall times of the 200 STB-1 test clips (every
# codec, 480x854..1080x1920) under two `fast` plans each (400 runs). With ~11 ms a clip of
# opening, planning and conversion that no plan changes, wall / estimate is 0.78-1.32 for 80 %
# of the runs, 1.03 median, 1.84 at most (the earlier per-packet fit underestimated the
# sampler 1.7x at the median, AV1 2.4x). E.g. H.264 540x960: an inter frame of 2-5 KB 1.0-1.3
# ms, a 36 KB keyframe 5.2 ms; 1080x1920 2.9-3.4 ms and 9.9 ms for a 60 KB keyframe.
NS_PER_PIXEL = {"h264": 1.1, "hevc": 1.5, "vp9": 1.0, "av1": 0.8, "libdav1d": 0.8}
MS_PER_KB = 0.125
MS_PER_FRAME = 0.13


@dataclass(frozen=True)
class Plan:
    """Packets [start, start + length) of each listed GOP, and the frame chosen per target."""

    prefixes: dict[int, int]  # GOP start packet index -> prefix length
    targets: tuple[float, ...]
    chosen: tuple[int, ...]  # packet index whose frame serves each target (decode order)
    cost: float

    @property
    def packets_to_decode(self) -> int:
        return sum(self.prefixes.values())


def packet_ms(index: PacketIndex) -> np.ndarray:
    """Estimated decode time of each packet on the reference core (ms)."""
    pixels = index.width * index.height
    per_frame = MS_PER_FRAME + NS_PER_PIXEL.get(index.codec, 1.0) * 1e-6 * pixels
    return per_frame + index.sizes * (MS_PER_KB / 1000.0)


def packet_costs(index: PacketIndex) -> np.ndarray:
    """Relative cost of each packet, in units of the clip's mean keyframe."""
    key_sizes = index.sizes[index.is_key]
    unit = float(key_sizes.mean()) if key_sizes.size else float(index.sizes.mean())
    return PACKET_OVERHEAD + index.sizes / max(unit, 1.0)


def _deviation(targets: np.ndarray, avail_pts: np.ndarray) -> float:
    if avail_pts.size == 0:
        return float("inf")
    return float(np.abs(targets[:, None] - avail_pts[None, :]).min(axis=1).sum())


class _State:
    def __init__(self, index: PacketIndex, costs: np.ndarray) -> None:
        self.costs = costs
        bounds = index.gop_bounds()
        self.gop_of = np.empty(len(index), dtype=np.int64)
        self.starts = np.array([s for s, _ in bounds], dtype=np.int64)
        for g, (s, e) in enumerate(bounds):
            self.gop_of[s:e] = g
        self.prefix = np.zeros(len(bounds), dtype=np.int64)
        # Leading pictures (open GOP: presented before their keyframe) reference the previous
        # GOP, so a decode that starts at the keyframe drops them: decoded, never returned.
        self.usable = index.pts_s >= index.pts_s[self.starts][self.gop_of] - 1e-9

    def available(self, prefix: np.ndarray | None = None) -> np.ndarray:
        p = self.prefix if prefix is None else prefix
        idx = [np.arange(s, s + n) for s, n in zip(self.starts, p, strict=True) if n > 0]
        got = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)
        return got[self.usable[got]]

    def extend_cost(self, g: int, length: int, costs: np.ndarray | None = None) -> float:
        s, cur = int(self.starts[g]), int(self.prefix[g])
        c = self.costs if costs is None else costs
        return float(c[s + cur : s + length].sum()) if length > cur else 0.0


def plan_frames(index: PacketIndex, spec: SamplingSpec) -> Plan:
    """Keyframes nearest the targets first, then the extensions worth their cost, then fill."""
    targets = np.asarray(spec.targets(index.duration, index.fps), dtype=np.float64)
    pts = index.pts_s
    costs = packet_costs(index)
    ms = packet_ms(index)
    st = _State(index, costs)

    if spec.mode == "dense":
        return _plan_dense(index, st, targets, spec.frames)
    keys = index.keyframes
    for t in targets:
        k = int(keys[np.argmin(np.abs(pts[keys] - t))])
        st.prefix[st.gop_of[k]] = max(st.prefix[st.gop_of[k]], 1)
    seeded = [int(s) for s, n in zip(st.starts, st.prefix, strict=True) if n]
    spent, spent_ms = float(costs[seeded].sum()), float(ms[seeded].sum())

    exact = spec.policy == "exact"
    budget = float("inf") if exact else spec.budget
    budget_ms = float("inf") if exact else spec.budget_ms

    def price(g: int, length: int) -> tuple[float, float] | None:
        """(relative cost, ms) of growing GOP g's prefix to `length`; None beyond a cap."""
        c, c_ms = st.extend_cost(g, length), st.extend_cost(g, length, ms)
        return (c, c_ms) if spent + c <= budget and spent_ms + c_ms <= budget_ms else None

    norm = max(index.duration, 1e-6)
    # The exact frame for each target, and the prefix needed to reach it.
    usable = np.flatnonzero(st.usable)
    best = [int(usable[np.argmin(np.abs(pts[usable] - t))]) for t in targets]
    while True:
        cur = _deviation(targets, pts[st.available()])
        if cur <= 1e-9:
            break
        choice: tuple[float, int, int, tuple[float, float]] | None = None
        for i in best:
            g = int(st.gop_of[i])
            s = int(st.starts[g])
            # every packet up to the last one presented at or before pts[i] in this GOP
            length = i - s + 1
            if length <= st.prefix[g]:
                continue
            cost = price(g, length)
            if cost is None:
                continue
            trial = st.prefix.copy()
            trial[g] = length
            gain = (cur - _deviation(targets, pts[st.available(trial)])) / norm
            ratio = gain / max(cost[0], 1e-9)
            if (
                gain > 0
                and (exact or ratio >= spec.tradeoff)
                and (choice is None or ratio > choice[0])
            ):
                choice = (ratio, g, length, cost)
        if choice is None:
            break
        _, g, length, (c, c_ms) = choice
        st.prefix[g] = length
        spent, spent_ms = spent + c, spent_ms + c_ms

    # Fill: a target whose nearest frame is taken gets a fresh one from the same GOP rather
    # than a duplicate: the frame nearest the target among the GOP's next `spec.fill` usable
    # frames (fill > 1 spreads the frames of a sparse GOP instead of bunching them after its
    # keyframe, for up to fill - 1 more packets decoded per fill).
    chosen: list[int] = []
    for t in targets:
        avail = st.available()
        nearest = int(avail[np.argmin(np.abs(pts[avail] - t))])
        if nearest in chosen:
            g = int(st.gop_of[nearest])
            s0, cur = int(st.starts[g]), int(st.prefix[g])
            end = int(st.starts[g + 1]) if g + 1 < len(st.starts) else len(pts)
            ahead = (j for j in range(s0 + cur, end) if st.usable[j])
            window = list(itertools.islice(ahead, spec.fill))
            nxt = min(window, key=lambda j: (abs(pts[j] - t), j)) if window else None
            cost = price(g, nxt - s0 + 1) if nxt is not None else None
            if nxt is not None and cost is not None:
                spent, spent_ms = spent + cost[0], spent_ms + cost[1]
                st.prefix[g] = nxt - s0 + 1
                avail = st.available()
        free = np.array([i for i in avail.tolist() if i not in chosen], dtype=np.int64)
        pool = free if free.size else avail
        chosen.append(int(pool[np.argmin(np.abs(pts[pool] - t))]))

    chosen.sort(key=lambda i: (pts[i], i))  # frames go to the network in presentation order
    prefixes = {int(s): int(n) for s, n in zip(st.starts, st.prefix, strict=True) if n > 0}
    return Plan(
        prefixes=prefixes, targets=tuple(targets.tolist()), chosen=tuple(chosen), cost=spent
    )


def served_frames(
    index: PacketIndex, plan: Plan, positions: Sequence[int], decoded: Collection[int]
) -> tuple[list[int], tuple[float, ...], float]:
    """The packet whose frame serves each of `plan.chosen` (itself, or where it did not decode
    the decoded packet nearest it in time), their timestamps, and the mean deviation of those
    from the targets at `positions` (each chosen packet's position among `plan.targets`)."""
    got = np.array(sorted(decoded), dtype=np.int64)
    picks = [
        i if i in decoded else int(got[np.argmin(np.abs(index.pts_s[got] - index.pts_s[i]))])
        for i in plan.chosen
    ]
    stamps = tuple(float(index.pts_s[i]) for i in picks)
    targets = np.asarray(plan.targets)[list(positions)]
    return picks, stamps, float(np.mean(np.abs(np.asarray(stamps) - targets)))


def split_gops(
    gops: list[tuple[int, int]], costs: np.ndarray, parts: int
) -> list[list[tuple[int, int]]]:
    """Longest-first split of (start, length) GOP prefixes into at most `parts` groups of
    similar total `costs`; deterministic, each group in decode order, no empty group."""
    groups: list[list[tuple[int, int]]] = [[] for _ in range(parts)]
    load = [0.0] * parts
    for g in sorted(gops, key=lambda g: (-float(costs[g[0] : g[0] + g[1]].sum()), g)):
        k = int(np.argmin(load))
        groups[k].append(g)
        load[k] += float(costs[g[0] : g[0] + g[1]].sum())
    return [sorted(grp) for grp in groups if grp]


def _plan_dense(index: PacketIndex, st: _State, targets: np.ndarray, n: int) -> Plan:
    """`n` consecutive usable frames in presentation order, starting nearest targets[0]."""
    usable = np.flatnonzero(st.usable)
    order = usable[np.argsort(index.pts_s[usable], kind="stable")]
    k = int(np.argmin(np.abs(index.pts_s[order] - targets[0])))
    k = max(0, min(k, len(order) - n))
    picked = order[k : k + n].tolist()
    picked += picked[-1:] * (n - len(picked))  # a clip shorter than n frames repeats its last
    for i in picked:
        g = int(st.gop_of[i])
        st.prefix[g] = max(st.prefix[g], i - int(st.starts[g]) + 1)
    cost = float(
        sum(
            st.costs[int(s) : int(s) + int(p)].sum()
            for s, p in zip(st.starts, st.prefix, strict=True)
        )
    )
    prefixes = {int(s): int(p) for s, p in zip(st.starts, st.prefix, strict=True) if p > 0}
    return Plan(prefixes=prefixes, targets=tuple(targets.tolist()), chosen=tuple(picked), cost=cost)
