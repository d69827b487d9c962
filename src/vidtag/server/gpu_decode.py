"""GPU decode stage (NVDEC in threads of the server process) and the hybrid CPU + GPU router.

NVDEC sessions and CUDA contexts cannot cross processes, so the GPU stage decodes in a thread
pool here, with `NvdecDecoderPool` keeping one reconfigurable session per thread. Frames stay
in the device's memory and are normalised there (`preprocess_tensor`, the same definition as
the CPU path); the batcher stacks the tensors and the torch runtime takes them as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np

from vidtag.decode.limits import DecodeLimits
from vidtag.decode.result import DecodedClip
from vidtag.decode.source import Input
from vidtag.decode.spec import SamplingSpec
from vidtag.decode.warmup import encode_in_memory
from vidtag.runtime.preprocess import preprocess_tensor
from vidtag.server.errors import RpcFailure
from vidtag.server.pipeline import Decoded, DecodeStage, before_deadline

if TYPE_CHECKING:
    from vidtag.decode.nvdec_backend import NvdecDecoderPool
    from vidtag.server.pipeline import ServedModel


# The NVDEC warm-up's example clips, (width, height, PyAV encoder): the largest phone size in
# both orientations and two smaller ones in H.264, and HEVC (its own session) at the largest.
# Decoding them once before the first request sizes each decoder's sessions and the GPU
# buffers of its conversion as mixed traffic would (one H100, 16 NVDEC processes, without
# them: GPU memory +9 % from the first 100 mixed clips to 10 000, flat after ~1 500).
# Encoding them (10 frames) costs ~2 s of one core here (x265 most of it).
EXAMPLES: tuple[tuple[int, int, str], ...] = (
    (1080, 1920, "libx264"),
    (1920, 1080, "libx264"),
    (720, 1280, "libx264"),
    (540, 960, "libx264"),
    (1080, 1920, "libx265"),
)
_X265 = "keyint=1:log-level=none:frame-threads=1:pools=none:rc-lookahead=0:bframes=0"


def example_clips(
    frames: int = 10, examples: Sequence[tuple[int, int, str]] = EXAMPLES
) -> tuple[bytes, ...]:
    """The `examples` as intra-only MP4 clips of `frames` frames (every frame a keyframe, so
    a plan of up to `frames` frames decodes as many distinct pictures); an encoder this PyAV
    lacks leaves its sizes out."""
    clips = []
    ramp = np.linspace(16, 235, 64, dtype=np.uint8)
    for width, height, encoder in examples:

        def image(i: int, width: int = width, height: int = height) -> np.ndarray:
            row = np.roll(ramp, 4 * i)[np.arange(width) * 64 // width]
            return np.broadcast_to(row[None, :, None], (height, width, 3))

        options = (
            {"preset": "ultrafast", "x265-params": _X265}
            if encoder == "libx265"
            else {"preset": "ultrafast", "g": "1"}
        )
        try:
            clips.append(
                encode_in_memory(
                    width, height, frames, image, encoder=encoder, options=options, rate=30
                )
            )
        except Exception:  # no such encoder in this FFmpeg build
            continue
    return tuple(clips)


def metadata_only(clip: DecodedClip) -> DecodedClip:
    """`clip` without its frames (an empty (0, 0, 0, 3) array), so the response path does not
    keep device memory alive."""
    return clip.recast(DecodedClip, frames=np.empty((0, 0, 0, 3), np.uint8))


def decode_on_device(
    video: Input, model: ServedModel, pool: NvdecDecoderPool, limits: DecodeLimits
) -> Decoded:
    """Decode with NVDEC and preprocess on the device, in the calling thread."""
    from vidtag.decode.nvdec_backend import sample_nvdec_cuda

    began = time.monotonic()
    clip = sample_nvdec_cuda(video, model.tagger.spec, limits, pool=pool, dtype="float32")
    decoded = time.monotonic()
    x = preprocess_tensor(clip.frames, model.meta.input)  # queued on the GPU, not waited for
    return Decoded(metadata_only(clip), x, decoded - began, began, decoded, time.monotonic())


class NvdecStage:
    """The decode stage on NVDEC: `workers` threads, each request decoded by one of them.

    Beyond `workers` running and `max_pending` waiting, a request is refused with
    RESOURCE_EXHAUSTED, as the CPU decode pool does. Errors are the decoder's own
    (InvalidVideo, LimitExceeded -> INVALID_ARGUMENT; BackendUnavailable)."""

    def __init__(
        self, pool: NvdecDecoderPool, limits: DecodeLimits, workers: int, max_pending: int
    ) -> None:
        self.pool = pool
        self.limits = limits
        self.workers = workers
        self.max_pending = max_pending
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="vidtag-nvdec")
        self.in_flight = 0  # submitted and not finished (running or waiting for a thread)

    @property
    def pending(self) -> int:
        """Requests waiting for a free NVDEC thread."""
        return max(0, self.in_flight - self.workers)

    async def __call__(self, video: Input, model: ServedModel, deadline: float | None) -> Decoded:
        if self.in_flight >= self.workers + self.max_pending:
            raise RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"all {self.workers} NVDEC decoders are busy and {self.pending} requests are "
                "waiting; try again later",
            )
        loop = asyncio.get_running_loop()
        work = functools.partial(decode_on_device, video, model, self.pool, self.limits)
        job: Future[Decoded] = self.executor.submit(before_deadline, deadline, work)
        self.in_flight += 1
        # Counted until the thread is done with it, even when the caller stops waiting.
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._finished))
        return await asyncio.wrap_future(job)

    def _finished(self) -> None:
        self.in_flight -= 1

    def warm(
        self,
        video: Input,
        examples: Sequence[bytes] = (),
        spec: SamplingSpec | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        """Decode `video` once in every thread at the same time (so each creates its NVDEC
        session now, not on its first request), then each of `examples` with `spec` as a
        request would (best effort); raises what decoding `video` raised."""
        from vidtag.decode.nvdec_backend import sample_nvdec_cuda

        barrier = threading.Barrier(self.workers)
        tiny = SamplingSpec(frames=2, height=16, width=16)
        jobs = [(clip, spec) for clip in examples] if spec is not None else []

        def one() -> None:
            barrier.wait(timeout_s)
            sample_nvdec_cuda(video, tiny, self.limits, pool=self.pool)
            for clip, clip_spec in jobs:
                with contextlib.suppress(Exception):
                    sample_nvdec_cuda(clip, clip_spec, self.limits, pool=self.pool, dtype="float32")

        for job in [self.executor.submit(one) for _ in range(self.workers)]:
            job.result(timeout_s)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


SMOOTHING = 0.1  # weight of a route's newest decode in its moving average


@dataclass
class Route:
    """One decode stage the router may pick, with how many requests it runs at once."""

    name: str
    stage: DecodeStage
    capacity: int
    in_flight: int = 0
    routed: int = 0  # requests sent here so far
    decode_s: float | None = None  # moving average of its decodes' seconds (None: none yet)

    def load(self) -> float:
        """Requests per decoder once this route takes one more."""
        return (self.in_flight + 1) / self.capacity

    def observe(self, seconds: float) -> None:
        last = self.decode_s
        self.decode_s = seconds if last is None else last + SMOOTHING * (seconds - last)


class HybridStage:
    """Sends each request to the fastest route with a free decoder (by its moving-average
    decode time), and when every decoder is busy, to the route expected to finish it first:
    mean decode time x (in flight + 1) / capacity, about the rounds it waits. Until every
    route has decoded something, the load ((in flight + 1) / capacity) alone decides. Ties
    go to the route listed first.

    Simulated (`benchmarks/hybrid_router.py`: 16 decoders of 25 ms beside 12 of 55 ms),
    against the load alone: closed loop, 16 at a time 620 instead of 477 req/s (p99 26
    instead of 57 ms: no request sent to a slow decoder while a fast one is free), 32 at a
    time the same 838 req/s at p99 57 instead of 112 ms; Poisson arrivals at 650 / 820 req/s
    p99 56 / 80 instead of 64 / 116 ms. Sending each request where it would finish first,
    free decoders or not, left the CPU idle at 32 at a time (629 req/s)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        if not routes or any(r.capacity < 1 for r in routes):
            raise ValueError("hybrid decoding needs routes with a capacity >= 1")
        self.routes = tuple(routes)

    def pick(self) -> Route:
        if any(r.decode_s is None for r in self.routes):
            return min(self.routes, key=Route.load)
        free = [r for r in self.routes if r.in_flight < r.capacity]
        if free:
            return min(free, key=lambda r: r.decode_s or 0.0)
        return min(self.routes, key=lambda r: (r.decode_s or 0.0) * r.load())

    async def __call__(self, video: Input, model: ServedModel, deadline: float | None) -> Decoded:
        route = self.pick()
        route.in_flight += 1
        route.routed += 1
        try:
            decoded = await route.stage(video, model, deadline)
        finally:
            route.in_flight -= 1
        route.observe(decoded.seconds)
        return decoded

    def counts(self) -> dict[str, int]:
        return {r.name: r.routed for r in self.routes}
