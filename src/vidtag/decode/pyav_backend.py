"""PyAV execution of a plan: feed each GOP's planned packets to a decoder, resize in swscale."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from vidtag.decode.index import PacketIndex, build_index
from vidtag.decode.limits import DecodeLimits
from vidtag.decode.planner import Plan, plan_frames
from vidtag.decode.result import DecodedClip
from vidtag.decode.spec import SamplingSpec
from vidtag.errors import InvalidVideo, LimitExceeded

# Long forward decodes profit from frame threading; keyframe-sized ones are slowed by it.
THREADED_PREFIX = 24


def _open(source: bytes | str | Path, limits: DecodeLimits) -> Any:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) > limits.max_bytes:
            raise LimitExceeded(f"video is {len(source)} bytes, the limit is {limits.max_bytes}")
        if len(source) == 0:
            raise InvalidVideo("empty input")
        handle: Any = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidVideo(f"no such file: {path}")
        if path.stat().st_size > limits.max_bytes:
            raise LimitExceeded(
                f"video is {path.stat().st_size} bytes, the limit is {limits.max_bytes}"
            )
        handle = str(path)
    try:
        return av.open(handle, mode="r", metadata_errors="ignore")
    except Exception as exc:
        raise InvalidVideo(f"not a readable video container: {exc}") from exc


def _configure(stream: Any, threaded: bool) -> Any:
    """The stream's own decoder (it carries the container's side data, e.g. the display matrix,
    onto every frame); threading must be chosen before its first packet."""
    cc = stream.codec_context
    if threaded:
        cc.thread_type = "FRAME"
        cc.thread_count = 2
    else:
        cc.thread_type = "NONE"
        cc.thread_count = 1
    return cc


def _to_rgb(frame: Any, spec: SamplingSpec) -> np.ndarray:
    """Resize+convert inside swscale; rotate the small result, never the full frame."""
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    swap = rotation in (90, 270)
    w, h = (spec.height, spec.width) if swap else (spec.width, spec.height)
    arr = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    if rotation:
        # The display matrix asks for a counter-clockwise rotation by `rotation` degrees.
        arr = np.rot90(arr, k=rotation // 90)
    return np.ascontiguousarray(arr)


def execute_plan(
    stream: Any, index: PacketIndex, plan: Plan, spec: SamplingSpec, limits: DecodeLimits
) -> tuple[dict[int, np.ndarray], int, int, int]:
    """Decode the planned prefixes: (frames by packet index, frames decoded, corrupt packets,
    display rotation of the frames)."""
    wanted = set(plan.chosen)
    by_pts = {round(float(index.pts_s[i]), 6): i for i in wanted}
    out: dict[int, np.ndarray] = {}
    decoded = corrupt = 0
    deadline = time.monotonic() + limits.max_decode_s
    tb = stream.time_base
    rotation = 0
    dec = _configure(stream, threaded=max(plan.prefixes.values()) > THREADED_PREFIX)
    for start, length in sorted(plan.prefixes.items()):
        frames: list[Any] = []
        for i in range(start, start + length):
            pkt = index.packet(i)
            if time.monotonic() > deadline:
                raise LimitExceeded(f"decoding took longer than {limits.max_decode_s:.1f} s")
            try:
                frames.extend(dec.decode(pkt))
            except av.error.FFmpegError:
                corrupt += 1
        try:
            frames.extend(dec.decode(None))
        except av.error.FFmpegError:
            corrupt += 1
        dec.flush_buffers()
        decoded += len(frames)
        for fr in frames:
            if fr.pts is None or tb is None:
                continue
            key = round(float(fr.pts * tb) - index.origin_s, 6)
            i = by_pts.get(key)
            if i is not None and i not in out:
                out[i] = _to_rgb(fr, spec)
                rotation = int(getattr(fr, "rotation", 0) or 0) % 360
    return out, decoded, corrupt, rotation


def sample_pyav(
    source: bytes | str | Path, spec: SamplingSpec, limits: DecodeLimits
) -> DecodedClip:
    t0 = time.perf_counter()
    container = _open(source, limits)
    try:
        if not container.streams.video:
            raise InvalidVideo("no video stream in the input")
        stream = container.streams.video[0]
        index = build_index(container, stream, limits)
        plan = plan_frames(index, spec)
        frames, decoded, corrupt, rotation = execute_plan(stream, index, plan, spec, limits)
    finally:
        container.close()
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
