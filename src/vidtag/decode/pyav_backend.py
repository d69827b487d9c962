"""PyAV execution of a plan: feed each GOP's planned packets to a decoder, resize in swscale."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from vidtag.decode import mp4
from vidtag.decode.index import PacketIndex, build_index
from vidtag.decode.limits import DecodeLimits
from vidtag.decode.planner import Plan, packet_ms, plan_frames, served_frames, split_gops
from vidtag.decode.result import DecodedClip
from vidtag.decode.shares import empty_share, share_plan
from vidtag.decode.source import Input, Source
from vidtag.decode.spec import SamplingSpec
from vidtag.errors import InvalidVideo, LimitExceeded

# Long forward decodes profit from frame threading; keyframe-sized ones are slowed by it.
THREADED_PREFIX = 24
# Codecs whose decoder needs nothing but the extradata, so a bare second context can help.
PARALLEL_CODECS = {"h264", "hevc", "vp9", "av1", "vp8", "libdav1d"}
# Decoders that honour `skip_frame` per packet as it is submitted. libdav1d applies it when a
# frame comes out, which may be after the next packet switched it: a returned frame went
# missing (an AV1 `exact` plan returned none).
SKIP_NONREF_CODECS = frozenset({"h264", "hevc", "vp9"})
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(max(workers, 2), thread_name_prefix="vidtag-gop")
        return _POOL


def _open(source: Input, limits: DecodeLimits) -> Any:
    """The container of a validated input (other backends share this)."""
    return open_container(Source(source, limits))


# Samples all tracks together (video, audio, subtitles, data) may claim, in max_packets.
ALL_TRACKS_FACTOR = 16


def check_sample_counts(src: Source) -> bool:
    """LimitExceeded for an MP4/MOV whose tables claim more samples than the limits allow,
    before FFmpeg allocates an index entry for each of them; InvalidVideo for movie or
    fragment boxes out of place. Every input is walked: FFmpeg recognises an MP4 behind
    leading boxes of any type. True when the walk found a video track."""
    limits = src.limits
    try:
        counts = mp4.sample_counts(src.read, src.size)
    except mp4.MalformedMP4 as exc:
        raise InvalidVideo(str(exc)) from exc
    except ValueError as exc:
        raise LimitExceeded(str(exc)) from exc
    for track in counts:
        if track.handler == b"vide" and track.samples > limits.max_packets:
            raise LimitExceeded(
                f"the video track claims {track.samples} frames; the limit is {limits.max_packets}"
            )
    bound = ALL_TRACKS_FACTOR * limits.max_packets  # all tracks: what FFmpeg would index
    if (claimed := sum(t.samples for t in counts)) > bound:
        raise LimitExceeded(f"the tracks claim {claimed} samples; the limit is {bound}")
    return any(t.handler == b"vide" for t in counts)


def open_container(src: Source, light_probe: bool = False) -> Any:
    """av.open on a validated input: sample counts checked first, no decoder (the ones that
    probe the streams included) allocates a picture above `limits.max_pixels`, and no network
    protocol is allowed.

    `light_probe`: FFmpeg's stream probe reads headers but decodes no picture. Probing an H.264
    track otherwise decodes its first keyframe only to learn the pixel format (12.9 ms of a
    13 ms open for a 540x960 clip here; 1.4 ms without), so `stream.codec_context.format` stays
    None until a frame is decoded; size, rate and time base are known either way. An MP4/MOV
    with a video track is then probed no further than its header (`probesize` 32: the movie
    box names every codec, size, rate and extradata; 0.34 instead of 1.86 ms for a 30 s
    540x960 upload here), and opened again with the full probe should that leave no video
    stream with a frame size."""
    mp4_video = check_sample_counts(src)
    # Nothing is fetched: bytes arrive through our own I/O and need no protocol, a path needs
    # `file` only, so a playlist (HLS) or concat list inside an input opens no URL.
    protocols = "file" if isinstance(src.handle, str) else "none"
    options = {"max_pixels": str(src.limits.max_pixels), "protocol_whitelist": protocols}
    if light_probe:
        options["skip_frame"] = "all"  # a codec option: reaches only the probing decoders
    if light_probe and mp4_video:
        container = _av_open(src, {**options, "probesize": "32"})
        if any(
            s.codec_context is not None and s.codec_context.width for s in container.streams.video
        ):
            return container
        container.close()
    return _av_open(src, options)


def _av_open(src: Source, options: dict[str, str]) -> Any:
    try:
        return av.open(src.handle, mode="r", metadata_errors="ignore", options=options)
    except Exception as exc:
        raise InvalidVideo(f"not a readable video container: {exc}") from exc


def _speed_options(cc: Any, deblock: bool) -> None:
    """Skipping the in-loop deblocking filter saves ~10 % of an H.264 keyframe's decode; at the
    network's input size the frames differ by ~0.15 grey levels on average."""
    if not deblock:
        cc.options = {**cc.options, "skip_loop_filter": "all"}


def _pixel_cap(cc: Any, max_pixels: int | None) -> None:
    """FFmpeg's own cap: a decoder refuses (an error, not an allocation) any picture larger
    than `max_pixels`, e.g. after an in-band SPS that contradicts the stream header."""
    if max_pixels is not None:
        cc.options = {**cc.options, "max_pixels": str(max_pixels)}


def _configure(
    stream: Any,
    threaded: bool,
    deblock: bool = True,
    max_pixels: int | None = None,
    ffmpeg_threads: int = 0,
) -> Any:
    """The stream's own decoder (it carries the container's side data, e.g. the display matrix,
    onto every frame); threading must be chosen before its first packet."""
    cc = stream.codec_context
    _speed_options(cc, deblock)
    _pixel_cap(cc, max_pixels)
    if ffmpeg_threads > 1:
        cc.thread_type = "AUTO"  # frame and slice threads, as FFmpeg sees fit
        cc.thread_count = ffmpeg_threads
    elif threaded:
        cc.thread_type = "FRAME"
        cc.thread_count = 2
    else:
        cc.thread_type = "NONE"
        cc.thread_count = 1
    return cc


def _extra_decoder(stream: Any, deblock: bool = True, max_pixels: int | None = None) -> Any:
    """A second single-threaded decoder for the same stream (no side data: rotation comes
    from the stream's own decoder)."""
    cc = av.CodecContext.create(stream.codec_context.name, "r")
    if stream.codec_context.extradata:
        cc.extradata = stream.codec_context.extradata
    _speed_options(cc, deblock)
    _pixel_cap(cc, max_pixels)
    cc.thread_type = "NONE"
    cc.thread_count = 1
    return cc


_UNSPECIFIED = 2  # AVCOL_SPC_UNSPECIFIED, AVCOL_PRI_UNSPECIFIED, AVCOL_TRC_UNSPECIFIED


def _to_rgb(frame: Any, spec: SamplingSpec, rotation: int) -> np.ndarray:
    """Resize+convert inside swscale; rotate the small result, never the full frame."""
    swap = rotation in (90, 270)
    w, h = (spec.height, spec.width) if swap else (spec.width, spec.height)
    try:
        small = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA")
    except av.error.FFmpegError:
        # swscale refuses colour metadata it does not know (reserved matrix coefficients in
        # a bitstream, found by fuzzing: ENOTSUP): convert as unspecified, as players do.
        frame.colorspace = frame.color_primaries = frame.color_trc = _UNSPECIFIED
        small = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA")
    arr = small.to_ndarray()
    if rotation:
        # The display matrix asks for a counter-clockwise rotation by `rotation` degrees.
        arr = np.rot90(arr, k=rotation // 90)
    return np.ascontiguousarray(arr)


@dataclass
class _Run:
    """What the decoders of one plan share, read-only while they run except `rotation`: the
    stream's own decoder sets it from its first frame (the display matrix rides on its frames
    only) and then sets `known`; the other decoders decode meanwhile and wait for it only
    before their first resize."""

    index: PacketIndex
    spec: SamplingSpec
    by_pts: dict[float, int]
    # Packet indices whose frames are returned, for decoders that skip non-reference frames
    # on the way (None: decode every packet).
    chosen: frozenset[int] | None
    tb: Any
    deadline: float
    max_pixels: int
    rotation: int | None = None
    known: threading.Event = field(default_factory=threading.Event)

    def decode_gops(
        self, dec: Any, gops: list[tuple[int, int]], own: bool
    ) -> tuple[dict[int, np.ndarray], int, int]:
        """Feed each GOP prefix to `dec`, flush, keep the wanted frames resized:
        (frames by packet index, frames decoded, corrupt packets)."""
        try:
            return self._decode(dec, gops, own)
        finally:
            if own:  # no frame at all: no display matrix to wait for
                if self.rotation is None:
                    self.rotation = 0
                self.known.set()

    def _rotation(self) -> int:
        if not self.known.wait(max(self.deadline - time.monotonic(), 0.0)):
            raise LimitExceeded("decoding took longer than the limit")
        return self.rotation or 0

    def _decode(
        self, dec: Any, gops: list[tuple[int, int]], own: bool
    ) -> tuple[dict[int, np.ndarray], int, int]:
        out: dict[int, np.ndarray] = {}
        decoded = corrupt = 0
        skip = "DEFAULT"
        for start, length in gops:
            frames: list[Any] = []
            for i in range(start, start + length):
                if time.monotonic() > self.deadline:
                    raise LimitExceeded("decoding took longer than the limit")
                # A frame nothing refers to is skipped unless it is returned: the frames are
                # the same, fewer are decoded (FFmpeg reads each packet's reference flag).
                mode = "DEFAULT" if self.chosen is None or i in self.chosen else "NONREF"
                if mode != skip:
                    dec.skip_frame = skip = mode
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
                if fr.width * fr.height > self.max_pixels:  # the stream header lied
                    raise LimitExceeded(
                        f"a decoded frame is {fr.width}x{fr.height}, over the limit of "
                        f"{self.max_pixels} pixels"
                    )
                if own and self.rotation is None:
                    # A display matrix may say any angle: snap to quarter turns, as mp4.py does.
                    angle = float(getattr(fr, "rotation", 0) or 0)
                    self.rotation = round(angle / 90.0) * 90 % 360
                    self.known.set()
                if fr.pts is None or self.tb is None:
                    continue
                at = round(float(fr.pts * self.tb) - self.index.origin_s, 6)
                want = self.by_pts.get(at)
                if want is not None and want not in out:
                    try:
                        out[want] = _to_rgb(fr, self.spec, self._rotation())
                    except av.error.FFmpegError:  # a frame swscale cannot convert at all
                        corrupt += 1
        return out, decoded, corrupt


def execute_plan(
    stream: Any,
    index: PacketIndex,
    plan: Plan,
    spec: SamplingSpec,
    limits: DecodeLimits,
    threads: int = 1,
) -> tuple[dict[int, np.ndarray], int, int, int]:
    """Decode the planned prefixes: (frames by packet index, frames decoded, corrupt packets,
    display rotation). With `threads` > 1 the GOPs are shared among that many single-threaded
    decoders, all started at once (FFmpeg and swscale release the GIL)."""
    run = _Run(
        index=index,
        spec=spec,
        by_pts={round(float(index.pts_s[i]), 6): i for i in set(plan.chosen)},
        chosen=frozenset(plan.chosen) if index.codec in SKIP_NONREF_CODECS else None,
        tb=stream.time_base,
        deadline=time.monotonic() + limits.max_decode_s,
        max_pixels=limits.max_pixels,
    )
    gops = sorted(plan.prefixes.items())
    if spec.threading == "ffmpeg":
        main = _configure(stream, False, spec.deblock, limits.max_pixels, ffmpeg_threads=threads)
        out, decoded, corrupt = run.decode_gops(main, gops, own=True)
        return out, decoded, corrupt, run.rotation or 0
    parallel = threads > 1 and len(gops) > 1 and index.codec in PARALLEL_CODECS
    longest = max(plan.prefixes.values())
    threaded = not parallel and longest > THREADED_PREFIX
    main = _configure(stream, threaded, spec.deblock, limits.max_pixels)
    if not parallel:
        out, decoded, corrupt = run.decode_gops(main, gops, own=True)
        return out, decoded, corrupt, run.rotation or 0
    # All decoders start at once; the stream's own one takes the group with the first GOP.
    groups = split_gops(gops, packet_ms(index), threads)
    groups.sort(key=lambda grp: grp[0] != gops[0])
    futures = [
        _pool(threads).submit(
            run.decode_gops, _extra_decoder(stream, spec.deblock, limits.max_pixels), grp, False
        )
        for grp in groups[1:]
    ]
    try:
        results = [run.decode_gops(main, groups[0], own=True)]
    finally:
        wait(futures)  # none may outlive the input it reads from
    results += [f.result() for f in futures]
    out, decoded, corrupt = {}, 0, 0
    for part, n_dec, n_bad in results:
        out.update(part)
        decoded += n_dec
        corrupt += n_bad
    return out, decoded, corrupt, run.rotation or 0


@contextmanager
def indexed(
    source: Input, limits: DecodeLimits, light_probe: bool = False
) -> Iterator[tuple[Source, Any, Any, PacketIndex]]:
    """(source, container, first video stream, packet index), closed on exit. A still image
    attached to an audio file (an MP3's cover art) is not a video stream. `light_probe`: see
    `open_container`."""
    with Source(source, limits) as src:
        container = open_container(src, light_probe)
        try:
            cover = av.stream.Disposition.attached_pic
            videos = [s for s in container.streams.video if not s.disposition & cover]
            if not videos:
                only = " (only an attached picture)" if container.streams.video else ""
                raise InvalidVideo(f"no video stream in the input{only}")
            stream = videos[0]
            yield src, container, stream, build_index(container, stream, limits, src.read, src.size)
        finally:
            container.close()


def sample_pyav(source: Input, spec: SamplingSpec, limits: DecodeLimits) -> DecodedClip:
    t0 = time.perf_counter()
    with indexed(source, limits, light_probe=True) as (_, _, stream, index):
        whole = plan_frames(index, spec)
        plan, positions = share_plan(index, whole, spec.share)
        if not plan.chosen:
            return empty_share(index, whole, spec, time.perf_counter() - t0)
        frames, decoded, corrupt, rotation = execute_plan(
            stream, index, plan, spec, limits, threads=spec.threads
        )
    if not frames:
        # The full probe decodes a picture header, so it can name why (e.g. an SPS frame size
        # over the pixel limit, which the light probe never read): worth it on failure only.
        with indexed(source, limits):
            pass
        raise InvalidVideo("no frame of the video could be decoded")
    # A planned frame that failed to decode is replaced by the nearest one that did.
    picks, stamps, dev = served_frames(index, plan, positions, frames.keys())
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
        positions=positions if spec.share[1] > 1 else (),
    )
