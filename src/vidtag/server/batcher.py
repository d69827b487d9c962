"""Dynamic batching in front of a batched `infer` call, with Triton's dynamic_batching semantics.

Scheduling (names and rules follow Triton's `dynamic_batching` block):

- One scheduler task takes requests from the queue front in arrival order. It dispatches at once
  when the queue holds the largest preferred batch size (`max_batch_size` when none is set), or,
  failing that, any preferred size (the largest one reached); otherwise it dispatches whatever is
  queued once the oldest request has waited `max_queue_delay_microseconds` (0: at once). As in
  Triton, a batch never exceeds the largest preferred size when preferred sizes are set.
- One batch runs at a time per batcher: the ONNX Runtime session already spreads one batch over
  all its intra-op threads, so a second concurrent run would only contend for the same cores.
  Inference runs on `executor` (never on the event loop); requests arriving meanwhile queue up
  and form the next batch, which is how batches grow under load.
- `max_queue_size` bounds requests waiting outside the running batch; one more is refused with
  RESOURCE_EXHAUSTED at once. A request whose deadline has passed is dropped from the queue
  with DEADLINE_EXCEEDED before it takes a batch slot. A cancelled `submit` leaves the queue, or
  its row's result is discarded if its batch is already running.
- Every request gets exactly one response. Inputs are numpy arrays or torch tensors (on any
  device: the GPU path hands in tensors NVDEC decoded); they are checked at `submit` (shape and
  dtype must match `input_shape`/`input_dtype`, or else the first request's), so a batch always
  stacks: numpy rows with `np.stack`, and a batch holding any tensor with `torch.stack` on the
  first tensor's device (numpy rows copied there). torch is never imported here: a tensor can
  only exist once its program has imported torch. If
  the batched call raises, each request of that batch is retried alone and only those that fail
  again get the exception, as raised (the server's error table maps it).
- `stop(drain=True)` refuses new requests with UNAVAILABLE and finishes the queued ones, without
  waiting out the queue delay; `drain=False` fails the queued ones with UNAVAILABLE. Either way
  a batch already running completes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import grpc
import numpy as np

from vidtag.server.errors import RpcFailure

log = logging.getLogger(__name__)

Outputs = tuple[np.ndarray, ...]
Input = Any  # one request's input: a numpy array or a torch tensor
InferFn = Callable[[Input], Sequence[np.ndarray]]

# `BatchObserver.on_reject` reasons (label values for a metric).
REJECT_QUEUE_FULL: Final = "queue_full"
REJECT_DEADLINE: Final = "deadline"
REJECT_SHUTTING_DOWN: Final = "shutting_down"
REJECT_INVALID_INPUT: Final = "invalid_input"


@dataclass(frozen=True)
class BatcherConfig:
    """Triton's `dynamic_batching` settings, plus the input signature every request must have.

    `input_shape`/`input_dtype` are per request (no batch dimension); None means "whatever the
    first submitted request has".
    """

    max_batch_size: int = 8
    max_queue_delay_microseconds: int = 0
    max_queue_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = ()
    input_shape: tuple[int, ...] | None = None
    input_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_microseconds < 0:
            delay = self.max_queue_delay_microseconds
            raise ValueError(f"max_queue_delay_microseconds must be >= 0, got {delay}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        bad = [p for p in self.preferred_batch_sizes if not 1 <= p <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred_batch_sizes {bad} outside 1..max_batch_size ({self.max_batch_size})"
            )
        if self.input_dtype is not None:
            np.dtype(self.input_dtype)  # raises TypeError on an unknown name

    @property
    def largest_batch(self) -> int:
        """The batch size cap: the largest preferred size if any are set (as in Triton)."""
        return max(self.preferred_batch_sizes, default=self.max_batch_size)


class BatchObserver(Protocol):
    """Hooks for metrics; called on the event loop, so they must be quick and must not block."""

    def on_batch(self, size: int, infer_seconds: float) -> None:
        """A successful `infer` call on `size` rows took `infer_seconds` (on its worker thread)."""

    def on_dequeue(self, queue_seconds: float) -> None:
        """A request left the queue for a batch after waiting `queue_seconds`."""

    def on_reject(self, reason: str) -> None:
        """A request was refused or dropped before inference (one of the REJECT_* reasons)."""


class NullObserver:
    """The default observer: records nothing."""

    def on_batch(self, size: int, infer_seconds: float) -> None:
        pass

    def on_dequeue(self, queue_seconds: float) -> None:
        pass

    def on_reject(self, reason: str) -> None:
        pass


@dataclass(eq=False)  # identity equality: deque.remove must not compare arrays
class _Request:
    x: Input
    deadline: float | None
    future: asyncio.Future[Outputs]
    enqueued: float = field(default_factory=time.monotonic)


def _tensor_type() -> Any:
    """torch.Tensor if this process has imported torch, else None (then no input is one)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None)


def _signature(x: Input) -> tuple[tuple[int, ...], str] | None:
    """(shape, dtype name) of a numpy array or torch tensor; None for anything else."""
    if isinstance(x, np.ndarray):
        return x.shape, x.dtype.name
    tensor = _tensor_type()
    if tensor is not None and isinstance(x, tensor):
        return tuple(x.shape), str(x.dtype).removeprefix("torch.")
    return None


def _stack(rows: list[Input]) -> Input:
    """One batch of the rows: numpy if all are, else a tensor on the first tensor's device."""
    tensor = _tensor_type()
    first = next((r for r in rows if tensor is not None and isinstance(r, tensor)), None)
    if first is None:
        return np.stack(rows)
    torch = sys.modules["torch"]
    return torch.stack([torch.as_tensor(r, device=first.device) for r in rows])


def _infer_rows(infer: InferFn, rows: list[Input]) -> tuple[Outputs, float]:
    """Worker-thread side: stack, run, check that every output has one row per input."""
    batch = _stack(rows)
    start = time.perf_counter()
    outputs = tuple(np.asarray(o) for o in infer(batch))
    seconds = time.perf_counter() - start
    for i, out in enumerate(outputs):
        if out.ndim == 0 or out.shape[0] != len(rows):
            raise ValueError(
                f"infer returned output {i} with shape {out.shape} for a batch of {len(rows)}"
            )
    return outputs, seconds


class DynamicBatcher:
    """Queues single requests and runs them through `infer` in dynamic batches (see module doc).

    Lives on one event loop: create, start, submit and stop it there. The executor is borrowed,
    not shut down; None means the loop's default executor.
    """

    def __init__(
        self,
        infer: InferFn,
        config: BatcherConfig,
        executor: concurrent.futures.Executor | None = None,
        name: str = "",
        observer: BatchObserver | None = None,
    ) -> None:
        self._infer = infer
        self._config = config
        self._executor = executor
        self._name = name
        self._observer: BatchObserver = observer or NullObserver()
        self._queue: deque[_Request] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._accepting = False
        self._in_flight = 0
        self._shape = config.input_shape
        # dtype by name: numpy's, or torch's without its "torch." prefix ("float32" for both)
        self._dtype = None if config.input_dtype is None else np.dtype(config.input_dtype).name

    @property
    def config(self) -> BatcherConfig:
        return self._config

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting the running one)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Requests in the batch now running (0 when idle)."""
        return self._in_flight

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._accepting = True
        self._task = asyncio.get_running_loop().create_task(
            self._schedule(), name=f"batcher-{self._name}" if self._name else "batcher"
        )

    async def stop(self, drain: bool = True) -> None:
        self._accepting = False
        if not drain:
            self._fail_queued("shutting down")
        self._wake.set()
        if self._task is not None:
            await self._task

    async def submit(self, x: Input, deadline: float | None = None) -> Outputs:
        """Run one request (no batch dimension) and return its row of each output.

        `deadline` is on the `time.monotonic()` clock. Raises `RpcFailure` when the request is
        refused or dropped, or whatever `infer` raised for this request alone.
        """
        if not self._accepting:
            what = "shutting down" if self._task is not None else "not started"
            self._reject(REJECT_SHUTTING_DOWN, grpc.StatusCode.UNAVAILABLE, what)
        self._check_input(x)
        if deadline is not None and time.monotonic() >= deadline:
            self._reject(REJECT_DEADLINE, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired")
        if len(self._queue) >= self._config.max_queue_size:
            self._reject(
                REJECT_QUEUE_FULL,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"queue full ({len(self._queue)} waiting); retry later",
            )
        req = _Request(x, deadline, asyncio.get_running_loop().create_future())
        self._queue.append(req)
        self._wake.set()
        try:
            return await req.future
        except asyncio.CancelledError:
            # Awaiting the future from a cancelled task cancels the future too, so a running
            # batch will skip it; a still-queued request must also give back its queue slot.
            with contextlib.suppress(ValueError):
                self._queue.remove(req)
            raise

    # -- submit-side helpers ------------------------------------------------------------------

    def _msg(self, text: str) -> str:
        return f"{self._name}: {text}" if self._name else text

    def _reject(self, reason: str, code: grpc.StatusCode, text: str) -> None:
        self._notify(self._observer.on_reject, reason)
        raise RpcFailure(code, self._msg(text))

    def _check_input(self, x: Input) -> None:
        sig = _signature(x)
        if sig is None:
            self._reject(
                REJECT_INVALID_INPUT,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input must be a numpy array or torch tensor, got {type(x).__name__}",
            )
            return
        shape, dtype = sig
        if self._shape is not None and shape != self._shape:
            self._reject(
                REJECT_INVALID_INPUT,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input shape {shape} does not match the model's {self._shape}",
            )
        if self._dtype is not None and dtype != self._dtype:
            self._reject(
                REJECT_INVALID_INPUT,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input dtype {dtype} does not match the model's {self._dtype}",
            )
        # The first accepted request fixes whatever the config left open.
        if self._shape is None:
            self._shape = shape
        if self._dtype is None:
            self._dtype = dtype

    # -- scheduler ----------------------------------------------------------------------------

    async def _schedule(self) -> None:
        try:
            while (batch := await self._next_batch()) is not None:
                await self._run(batch)
        except Exception:
            log.exception("batcher %r crashed; failing its queued requests", self._name)
        finally:
            # Normally empty here; not so if the task was cancelled (loop shutdown) or crashed.
            self._accepting = False
            self._fail_queued("batcher stopped")

    async def _next_batch(self) -> list[_Request] | None:
        """Wait until a batch is due and take it off the queue; None once stopped and drained."""
        delay = self._config.max_queue_delay_microseconds / 1e6
        while True:
            now = time.monotonic()
            self._purge(now)
            if not self._queue:
                if not self._accepting:
                    return None
                await self._wait(None)
                continue
            due = self._queue[0].enqueued + delay
            size = self._due_size(len(self._queue), now >= due or not self._accepting)
            if size:
                batch = [self._queue.popleft() for _ in range(size)]
                for req in batch:
                    self._notify(self._observer.on_dequeue, now - req.enqueued)
                return batch
            await self._wait(due - now)

    def _due_size(self, queued: int, delay_over: bool) -> int:
        """How many requests to dispatch now (0: keep waiting), by Triton's rules."""
        largest = self._config.largest_batch
        if queued >= largest or delay_over:
            return min(queued, largest)
        reached = [p for p in self._config.preferred_batch_sizes if p <= queued]
        return max(reached, default=0)

    def _purge(self, now: float) -> None:
        """Drop cancelled requests and fail expired ones, so neither takes a batch slot."""
        if all(not r.future.done() and not self._expired(r, now) for r in self._queue):
            return
        live: deque[_Request] = deque()
        for req in self._queue:
            if req.future.done():
                continue
            if self._expired(req, now):
                self._expire(req)
                continue
            live.append(req)
        self._queue = live

    async def _wait(self, timeout: float | None) -> None:
        # No await between the caller's look at the queue and clear(): no wake-up is lost.
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _run(self, batch: list[_Request]) -> None:
        self._in_flight = len(batch)
        try:
            try:
                outputs = await self._call([r.x for r in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0], exc=exc)
                    return
                log.warning(
                    "batch of %d failed (%s: %s); retrying each request alone",
                    len(batch),
                    type(exc).__name__,
                    exc,
                )
                await self._run_alone(batch)
                return
            for i, req in enumerate(batch):
                _settle(req, result=tuple(out[i].copy() for out in outputs))
        finally:
            self._in_flight = 0
            # Only reached with unsettled requests when this task is being cancelled.
            for req in batch:
                _settle(req, exc=RpcFailure(grpc.StatusCode.UNAVAILABLE, self._msg("aborted")))

    async def _run_alone(self, batch: list[_Request]) -> None:
        for req in batch:
            if req.future.done():
                continue
            if self._expired(req, time.monotonic()):
                self._expire(req)
                continue
            try:
                outputs = await self._call([req.x])
            except Exception as exc:
                _settle(req, exc=exc)
            else:
                _settle(req, result=tuple(out[0].copy() for out in outputs))

    async def _call(self, rows: list[Input]) -> Outputs:
        loop = asyncio.get_running_loop()
        outputs, seconds = await loop.run_in_executor(
            self._executor, _infer_rows, self._infer, rows
        )
        self._notify(self._observer.on_batch, len(rows), seconds)
        return outputs

    # -- shared helpers -----------------------------------------------------------------------

    @staticmethod
    def _expired(req: _Request, now: float) -> bool:
        return req.deadline is not None and now >= req.deadline

    def _expire(self, req: _Request) -> None:
        self._notify(self._observer.on_reject, REJECT_DEADLINE)
        msg = self._msg("deadline expired while queued")
        _settle(req, exc=RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, msg))

    def _fail_queued(self, text: str) -> None:
        queued, self._queue = self._queue, deque()
        for req in queued:
            if not req.future.done():
                self._notify(self._observer.on_reject, REJECT_SHUTTING_DOWN)
                _settle(req, exc=RpcFailure(grpc.StatusCode.UNAVAILABLE, self._msg(text)))

    def _notify(self, hook: Callable[..., None], *args: float | int | str) -> None:
        """Call an observer hook; a broken metrics hook must not break scheduling."""
        try:
            hook(*args)
        except Exception:
            log.exception("batcher observer %s failed", getattr(hook, "__name__", hook))


def _settle(
    req: _Request, *, result: Outputs | None = None, exc: BaseException | None = None
) -> None:
    """Resolve a request's future unless it is already done (cancelled or settled)."""
    if req.future.done():
        return
    if exc is not None:
        req.future.set_exception(exc)
    else:
        assert result is not None
        req.future.set_result(result)
