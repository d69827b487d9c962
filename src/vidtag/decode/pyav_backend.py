"""PyAV execution of a plan: feed each GOP's planned packets to a decoder, resize in swscale."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from vidtag.decode.index import PacketIndex, build_index
from vidtag.decode.limits import DecodeLimits
from vidtag.decode.planner import Plan, packet_costs, plan_frames
from vidtag.decode.result import DecodedClip
from vidtag.decode.source import Source
from vidtag.decode.spec import SamplingSpec
from vidtag.errors import InvalidVideo, LimitExceeded

# Long forward decodes profit from frame threading; keyframe-sized ones are slowed by it.
THREADED_PREFIX = 24
# Codecs whose decoder needs nothing but the extradata, so a bare second context can help.
PARALLEL_CODECS = {"h264", "hevc", "vp9", "av1", "vp8", "libdav1d"}
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(max(workers, 2), thread_name_prefix="vidtag-gop")
        return _POOL


def _open(source: bytes | str | Path, limits: DecodeLimits) -> Any:
    """The container of a validated input (other backends share this)."""
    return open_container(Source(source, limits))


def open_container(src: Source) -> Any:
    try:
        return av.open(src.handle, mode="r", metadata_errors="ignore")
    except Exception as exc:
        raise InvalidVideo(f"not a readable video container: {exc}") from exc


def _speed_options(cc: Any, deblock: bool) -> None:
    """Skipping the in-loop deblocking filter saves ~10 % of an H.264 keyframe's decode; at the
    network's input size the frames differ by ~0.15 grey levels on average."""
    if not deblock:
        cc.options = {**cc.options, "skip_loop_filter": "all"}


def _configure(stream: Any, threaded: bool, deblock: bool = True) -> Any:
    """The stream's own decoder (it carries the container's side data, e.g. the display matrix,
    onto every frame); threading must be chosen before its first packet."""
    cc = stream.codec_context
    _speed_options(cc, deblock)
    if threaded:
        cc.thread_type = "FRAME"
        cc.thread_count = 2
    else:
        cc.thread_type = "NONE"
        cc.thread_count = 1
    return cc


def _extra_decoder(stream: Any, deblock: bool = True) -> Any:
    """A second single-threaded decoder for the same stream (no side data: rotation comes
    from the stream's own decoder)."""
    cc = av.CodecContext.create(stream.codec_context.name, "r")
    if stream.codec_context.extradata:
        cc.extradata = stream.codec_context.extradata
    _speed_options(cc, deblock)
    cc.thread_type = "NONE"
    cc.thread_count = 1
    return cc


def _to_rgb(frame: Any, spec: SamplingSpec, rotation: int) -> np.ndarray:
    """Resize+convert inside swscale; rotate the small result, never the full frame."""
    swap = rotation in (90, 270)
    w, h = (spec.height, spec.width) if swap else (spec.width, spec.height)
    arr = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    if rotation:
        # The display matrix asks for a counter-clockwise rotation by `rotation` degrees.
        arr = np.rot90(arr, k=rotation // 90)
    return np.ascontiguousarray(arr)


@dataclass
class _Run:
    """What the decoders of one plan share (read-only while they run, except `rotation`,
    which the stream's own decoder sets from its first frame before any other starts)."""

    index: PacketIndex
    spec: SamplingSpec
    by_pts: dict[float, int]
    tb: Any
    deadline: float
    rotation: int | None = None

    def decode_gops(
        self, dec: Any, gops: list[tuple[int, int]], own: bool
    ) -> tuple[dict[int, np.ndarray], int, int]:
        """Feed each GOP prefix to `dec`, flush, keep the wanted frames resized:
        (frames by packet index, frames decoded, corrupt packets)."""
        out: dict[int, np.ndarray] = {}
        decoded = corrupt = 0
        for start, length in gops:
            frames: list[Any] = []
            for i in range(start, start + length):
                if time.monotonic() > self.deadline:
                    raise LimitExceeded("decoding took longer than the limit")
                try:
                    frames.extend(dec.decode(self.index.packet(i)))
                except av.error.FFmpegError:
                    corrupt += 1
            try:
                frames.extend(dec.decode(None))
            except av.error.FFmpegError:
                corrupt += 1
            dec.flush_buffers()
            decoded += len(frames)
            for fr in frames:
                if own and self.rotation is None:
                    self.rotation = int(getattr(fr, "rotation", 0) or 0) % 360
                if fr.pts is None or self.tb is None:
                    continue
                at = round(float(fr.pts * self.tb) - self.index.origin_s, 6)
                want = self.by_pts.get(at)
                if want is not None and want not in out:
                    out[want] = _to_rgb(fr, self.spec, self.rotation or 0)
        return out, decoded, corrupt


def _split(
    gops: list[tuple[int, int]], costs: np.ndarray, parts: int
) -> list[list[tuple[int, int]]]:
    """Longest-first split of GOP prefixes into at most `parts` groups of similar cost."""
    groups: list[list[tuple[int, int]]] = [[] for _ in range(parts)]
    load = [0.0] * parts
    for g in sorted(gops, key=lambda g: -float(costs[g[0] : g[0] + g[1]].sum())):
        k = int(np.argmin(load))
        groups[k].append(g)
        load[k] += float(costs[g[0] : g[0] + g[1]].sum())
    return [sorted(grp) for grp in groups if grp]


def execute_plan(
    stream: Any,
    index: PacketIndex,
    plan: Plan,
    spec: SamplingSpec,
    limits: DecodeLimits,
    threads: int = 1,
) -> tuple[dict[int, np.ndarray], int, int, int]:
    """Decode the planned prefixes: (frames by packet index, frames decoded, corrupt packets,
    display rotation). With `threads` > 1 the GOPs after the first are shared among that many
    single-threaded decoders running at once (FFmpeg and swscale release the GIL)."""
    run = _Run(
        index=index,
        spec=spec,
        by_pts={round(float(index.pts_s[i]), 6): i for i in set(plan.chosen)},
        tb=stream.time_base,
        deadline=time.monotonic() + limits.max_decode_s,
    )
    gops = sorted(plan.prefixes.items())
    parallel = threads > 1 and len(gops) > 2 and index.codec in PARALLEL_CODECS
    longest = max(plan.prefixes.values())
    main = _configure(stream, not parallel and longest > THREADED_PREFIX, spec.deblock)
    if not parallel:
        out, decoded, corrupt = run.decode_gops(main, gops, own=True)
        return out, decoded, corrupt, run.rotation or 0
    # The first GOP on the stream's own decoder: its first frame tells the display rotation.
    out, decoded, corrupt = run.decode_gops(main, gops[:1], own=True)
    groups = _split(gops[1:], packet_costs(index), threads)
    futures = [
        _pool(threads).submit(run.decode_gops, _extra_decoder(stream, spec.deblock), grp, False)
        for grp in groups[1:]
    ]
    results = [run.decode_gops(main, groups[0], own=True)]
    results += [f.result() for f in futures]
    for part, n_dec, n_bad in results:
        out.update(part)
        decoded += n_dec
        corrupt += n_bad
    return out, decoded, corrupt, run.rotation or 0


@contextmanager
def indexed(
    source: bytes | str | Path, limits: DecodeLimits
) -> Iterator[tuple[Source, Any, Any, PacketIndex]]:
    """(source, container, first video stream, packet index), closed on exit."""
    with Source(source, limits) as src:
        container = open_container(src)
        try:
            if not container.streams.video:
                raise InvalidVideo("no video stream in the input")
            stream = container.streams.video[0]
            yield src, container, stream, build_index(container, stream, limits, src.read, src.size)
        finally:
            container.close()


def sample_pyav(
    source: bytes | str | Path, spec: SamplingSpec, limits: DecodeLimits
) -> DecodedClip:
    t0 = time.perf_counter()
    with indexed(source, limits) as (_, _, stream, index):
        plan = plan_frames(index, spec)
        frames, decoded, corrupt, rotation = execute_plan(
            stream, index, plan, spec, limits, threads=spec.threads
        )
    if not frames:
        raise InvalidVideo("no frame of the video could be decoded")
    # A planned frame that failed to decode is replaced by the nearest one that did.
    got = np.array(sorted(frames), dtype=np.int64)
    picks = []
    for i in plan.chosen:
        picks.append(
            i if i in frames else int(got[np.argmin(np.abs(index.pts_s[got] - index.pts_s[i]))])
        )
    stamps = tuple(float(index.pts_s[i]) for i in picks)
    dev = float(np.mean(np.abs(np.asarray(stamps) - np.asarray(plan.targets))))
    h, w = (index.height, index.width)
    disp_w, disp_h = (h, w) if rotation in (90, 270) else (w, h)
    return DecodedClip(
        frames=np.stack([frames[i] for i in picks]),
        timestamps=stamps,
        targets=plan.targets,
        frames_decoded=decoded,
        packets_planned=plan.packets_to_decode,
        corrupt_packets=corrupt,
        mean_deviation=dev,
        width=disp_w,
        height=disp_h,
        duration=index.duration,
        fps=index.fps,
        codec=index.codec,
        rotation=rotation,
        keyframes=int(index.is_key.sum()),
        seconds=time.perf_counter() - t0,
    )
