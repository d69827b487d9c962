"""One served model: decode stage -> dynamic batcher -> decision rule, with per-stage timings.

The batched call returns, besides scores and embeddings, each row's batch size and the batch's
inference seconds, so every response can say which batch it ran in without the batcher knowing
about timings.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
import numpy as np

from vidtag.decode import DecodedClip, DecodeLimits
from vidtag.decode.shares import merge_shares
from vidtag.decode.source import Input
from vidtag.runtime.onnx_backend import OnnxBackend
from vidtag.runtime.preprocess import preprocess
from vidtag.runtime.tagger import Tagger
from vidtag.server.batcher import BatcherConfig, DynamicBatcher
from vidtag.server.decode_pool import DecodedResult, DecodePool
from vidtag.server.errors import RpcFailure
from vidtag.server.metrics import Metrics

T = TypeVar("T")


@dataclass(frozen=True)
class Decoded:
    """A request's decode: the clip, the model's input `x` ((3, T, H, W) float32: numpy, or a
    torch tensor on the GPU path), and when each step happened, on the `time.monotonic()`
    clock: CLOCK_MONOTONIC on Linux, one clock for the server and its decode workers, so a
    worker's stamp compares with the server's."""

    clip: DecodedClip
    x: Any
    seconds: float  # the decoder's own time (a split clip's slowest share)
    began: float  # the decoder started on it (a split clip's first share)
    received: float  # its frames were back in the server's process
    ready: float  # `x` was made
    shares: int = 1  # decoders that shared the clip (`vidtag.decode.shares`)

    def stages(self, start: float) -> dict[str, float]:
        """Seconds from `start` (the request's arrival) to `ready`, by step: waiting for a
        decoder and handing it the input (`decode_wait`), `decode`, getting the frames back
        (`transfer`: a decode worker's reply), and `preprocess`."""
        return {
            "decode_wait": max(self.began - start, 0.0),
            "decode": self.seconds,
            "transfer": max(self.received - self.began - self.seconds, 0.0),
            "preprocess": max(self.ready - self.received, 0.0),
        }


DecodeStage = Callable[[Input, "ServedModel", float | None], Awaitable[Decoded]]


class _MetricsObserver:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_batch(self, size: int, infer_seconds: float) -> None:
        self.metrics.batch_size.observe(size)

    def on_dequeue(self, queue_seconds: float) -> None:
        return None

    def on_reject(self, reason: str) -> None:
        self.metrics.rejected.labels(reason).inc()


class ServedModel:
    """A loaded model and its batcher; lives on the server's event loop.

    With `busy` given, a batch that starts while the decoders are working runs on a second,
    single-threaded session of the network, leaving the other cores to the decoders; an idle
    server runs it on the full session for the lowest latency (measured on 2 cores, closed loop
    at concurrency 4: 27.8 clips/s instead of 22.2, concurrency-1 p50 unchanged at 47 ms).
    """

    def __init__(
        self,
        tagger: Tagger,
        batching: BatcherConfig,
        executor: Executor,
        metrics: Metrics,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.tagger = tagger
        self._busy = busy
        self._narrow = (
            OnnxBackend(tagger.model_dir / tagger.meta.network_file, threads=1)
            if busy is not None
            else None
        )
        self.name, self.version, self.meta = tagger.name, tagger.version, tagger.meta
        spec = tagger.meta.input
        config = replace(
            batching,
            input_shape=(3, spec.frames, spec.height, spec.width),
            input_dtype="float32",
        )
        self.batcher = DynamicBatcher(
            self._infer,
            config,
            executor=executor,
            name=f"{self.name}/{self.version}",
            observer=_MetricsObserver(metrics),
        )

    def _infer(self, batch: Any) -> tuple[np.ndarray, ...]:
        """Scores and embeddings, then for every row: the batch's size, its inference seconds,
        and when it started (`time.monotonic()`)."""
        began = time.monotonic()
        narrow = self._narrow if self._busy is not None and self._busy() else None
        scores, emb = self.tagger.infer(batch, narrow)
        n = len(batch)
        return scores, emb, np.full(n, n), np.full(n, time.monotonic() - began), np.full(n, began)

    def warmup(self, decode: bool = True) -> None:
        """Decode (in this process) and infer once, then infer at the largest batch (blocking)."""
        spec = self.meta.input
        if decode:
            self.tagger.warmup()
        else:
            self.tagger.infer(np.zeros((1, 3, spec.frames, spec.height, spec.width), np.float32))
        largest = np.zeros(
            (self.batcher.config.largest_batch, 3, spec.frames, spec.height, spec.width),
            np.float32,
        )
        self.tagger.infer(largest)
        if self._narrow is not None:
            self.tagger.infer(largest, self._narrow)

    def decode_here(self, video: Input) -> Decoded:
        """Decode and preprocess in the calling thread (the in-process decode stage)."""
        began = time.monotonic()
        clip = self.tagger.decode(video)
        decoded = time.monotonic()
        x = preprocess(clip.frames, self.meta.input)
        return Decoded(clip, x, decoded - began, began, decoded, time.monotonic())


def before_deadline(deadline: float | None, fn: Callable[[], T]) -> T:
    """Run `fn` unless `deadline` (monotonic) passed while the request waited in a queue: a
    decode nobody will read is not spent."""
    if deadline is not None and time.monotonic() >= deadline:
        raise RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired while queued")
    return fn()


def thread_decode_stage(executor: Executor, workers: int, max_pending: int) -> DecodeStage:
    """Decode in `executor`'s `workers` threads (FFmpeg releases the GIL). Beyond `workers`
    decoding and `max_pending` waiting, a request is refused with RESOURCE_EXHAUSTED, as the
    process pool does."""
    admitted = 0

    async def stage(video: Input, model: ServedModel, deadline: float | None) -> Decoded:
        nonlocal admitted
        if admitted >= workers + max_pending:
            raise RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"all {workers} decode threads are busy and {admitted - workers} requests are "
                "waiting; try again later",
            )
        admitted += 1
        try:
            loop = asyncio.get_running_loop()
            work = functools.partial(model.decode_here, video)
            return await loop.run_in_executor(executor, before_deadline, deadline, work)
        finally:
            admitted -= 1

    return stage


def pool_decode_stage(
    pool: DecodePool, limits: DecodeLimits, device: str | None = None, shares: int = 1
) -> DecodeStage:
    """Decode in the pool's worker processes (a crash fails one request only); the workers send
    the uint8 frames, a quarter of the float32 input's bytes through the pipe, and they are
    normalised here: on the host (0.4 ms at 8x224x128, where piping the 2.75 MB float32 input
    cost ~8 ms of a request's median latency), or on the torch `device`. With `shares` > 1,
    a clip that finds fewer than half the workers busy and none waiting is split over up to
    `shares` idle ones (`vidtag.decode.shares`)."""

    async def stage(video: Input, model: ServedModel, deadline: float | None) -> Decoded:
        spec = model.tagger.spec
        if pool.busy or pool.pending:  # under load the cores are taken: one decoder per clip
            spec = replace(spec, threads=1)
        # Split only while most workers idle: under load every share would plan the clip again
        # for nothing, as the other workers have clips of their own.
        quiet = shares > 1 and not pool.pending and 2 * pool.busy < pool.workers_alive
        n = min(shares, pool.idle) if quiet else 1
        if n > 1:
            parts = await asyncio.gather(
                *(
                    pool.decode(video, replace(spec, threads=1, share=(i, n)), limits, deadline)
                    for i in range(n)
                ),
                return_exceptions=True,
            )
            clip = merge_shares([p.clip if isinstance(p, DecodedResult) else p for p in parts])
            began = min(p.began for p in parts if isinstance(p, DecodedResult))
        else:
            one = await pool.decode(video, spec, limits, deadline)
            clip, began = one.clip, one.began
        received = time.monotonic()
        if device is None:
            x = preprocess(clip.frames, model.meta.input)
        else:
            from vidtag.runtime.upload import frames_on_device  # torch: the GPU image only

            x = frames_on_device(clip.frames, model.meta.input, device)
        return Decoded(clip, x, clip.seconds, began, received, time.monotonic(), max(n, 1))

    return stage
