"""Decode untrusted uploads in worker processes, on the CPU (PyAV) or with NVDEC.

A segfault, abort or hang inside FFmpeg kills one worker, not the server: the request that worker
was decoding fails with INTERNAL, the pool spawns a replacement, and every other request carries
on. This is deliberately not `concurrent.futures.ProcessPoolExecutor`, where one dead worker
breaks the executor and fails every pending future.

Layout: N processes from the 'spawn' context (forking a process that has imported PyAV has hung
elsewhere), each with two one-way pipes and one task at a time. The asyncio side keeps a bounded
queue and hands tasks to idle workers. Per worker, a writer thread sends each task (so a
worker that stops reading can never block the event loop) as two messages: a small pickled
header, then the input's bytes as they are (pickling a 3.7 MB upload cost ~4 ms of the event
loop per request). An upload goes to the worker through shared memory instead when it can
(`vidtag.server.spool`), and the header names the segment. A reader thread blocks on the
result pipe, unpickles replies off the loop and posts them with `call_soon_threadsafe`; EOF on
that pipe means the process exited, and the reader reaps it and reports the exit status. The
decoded frames come back through a memfd of the worker's where /proc lets the server open it
(`pwrite` there, one `preadv` here, neither holding the GIL: ~0.1 instead of ~0.3-0.5 ms for
8x224x128 frames, the receiving thread's CPU a quarter), through the pipe otherwise; the
worker writes its memfd only while it has a task, and the reader has copied the frames out
before the worker can get its next one.

Status codes (as `RpcFailure`): pool full -> RESOURCE_EXHAUSTED; the request's own deadline passed
(while queued or while decoding) -> DEADLINE_EXCEEDED; worker crashed or exceeded
`task_timeout_s` -> INTERNAL (both are failures of the decoder on this input, not of the caller's
deadline; a hung worker is killed and replaced); pool not running or stopping -> UNAVAILABLE.
Exceptions raised in the worker (InvalidVideo, LimitExceeded, ...) are re-raised in the caller
with the same type and message, or as RuntimeError("<type>: <message>") when they do not pickle.

Test hook: when the environment variable VIDTAG_TEST_CRASH_MARKER is set at `start()`, inputs
that begin with its value followed by a command make the worker misbehave: `kill:` (SIGKILL
itself), `segv:` (SIGSEGV), `exit:` (exit code 3), `hang:` (sleep forever), `sleep=S:` (sleep S
seconds, then decode the rest of the input). Without the variable, no input is treated specially.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final

import grpc
import numpy as np

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

from vidtag.decode.limits import DecodeLimits
from vidtag.decode.result import DecodedClip
from vidtag.decode.source import READ, Input, SpoolRef, spooled_bytes
from vidtag.decode.spec import SamplingSpec
from vidtag.decode.warmup import encode_in_memory
from vidtag.errors import BackendUnavailable
from vidtag.runtime.device import CUDA_WAITS, set_cuda_waits
from vidtag.server.errors import RpcFailure
from vidtag.server.spool import Segment, UploadSpool, write_all
from vidtag.server.spool import supported as spool_supported

log = logging.getLogger(__name__)

TEST_CRASH_MARKER_ENV: Final = "VIDTAG_TEST_CRASH_MARKER"
_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL
PIPE_BUFFER: Final = 1 << 20  # bytes asked for each worker pipe (see _widen)
WORKER_NAME: Final = "vidtag-decode"  # a worker process's name (Linux: /proc/PID/comm)


@dataclass(frozen=True)
class DecodePoolConfig:
    """Sizing and limits of a DecodePool."""

    workers: int = 2  # processes
    max_pending: int = 64  # requests waiting for a worker; beyond that RESOURCE_EXHAUSTED
    task_timeout_s: float = 10.0  # a worker busy longer on one task is killed (INTERNAL)
    max_tasks_per_worker: int = 0  # >0: replace a worker after that many tasks (bounds leaks)
    start_timeout_s: float = 60.0  # start() fails if a worker is not ready by then
    warmup: bool = True  # each worker decodes a tiny in-memory clip before it takes work
    # The decode backend the workers use (`sample_frames`'s registry name). With "nvdec" each
    # worker holds its own CUDA context and NVDEC sessions, and a failed warm-up fails the
    # pool's start with the reason: NVDEC in N processes scales with N where N threads of one
    # process do not (one H100, 30 s 540x960 H.264 clips: 8 processes 199 clips/s, 8 threads
    # 43, best threads 68 at 4; benchmarks/nvdec_profile.py).
    backend: str = "pyav"
    gpu_id: int = 0  # the CUDA device NVDEC workers decode on
    # How an NVDEC worker waits for the GPU (`vidtag.runtime.device.set_cuda_waits`): "block"
    # sleeps, CUDA's "auto" spins a core per waiting process.
    cuda_waits: str = "block"
    # Shared memory for uploads on their way to a worker (`vidtag.server.spool`), in use and
    # kept for reuse; an upload beyond it, or any with 0, crosses the pipe.
    spool_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        if (
            min(self.max_pending, self.max_tasks_per_worker, self.spool_bytes) < 0
            or self.workers < 1
            or self.cuda_waits not in CUDA_WAITS
            or min(self.task_timeout_s, self.start_timeout_s) <= 0
        ):
            raise ValueError(f"invalid decode pool config: {self}")


@dataclass(frozen=True)
class DecodedResult:
    """A decode done in a worker: the clip with its (T, H, W, 3) uint8 frames, and when the
    worker started on it (`time.monotonic()`: CLOCK_MONOTONIC, the server's clock too)."""

    clip: DecodedClip
    began: float


# --------------------------------------------------------------------------------------------
# Worker process side. Tasks: a pickled header (task_id, spec, limits, file, frames_fd: whether
# the server reads the worker's frames memfd), then the input's bytes as one raw message (empty
# when `file`, a path, FileRef or SpoolRef, names the input); a pickled None alone: exit.
# Replies: ("ready", pid, reads the spool, its frames memfd or None)
# | ("failed", reason: warm-up, then exit)
# | ("ok", task_id, clip, frames: None (in the clip) or (shape, dtype) (in the memfd),
#    when decoding began: time.monotonic())
# | ("err", task_id, pickled exception or None, type name, message, formatted traceback).


def _worker_main(
    tasks: Connection,
    results: Connection,
    marker: bytes | None,
    config: DecodePoolConfig,
    examples: tuple[bytes, ...] = (),
    example_spec: SamplingSpec | None = None,
    probe: SpoolRef | None = None,
) -> None:
    # Ctrl-C in a terminal signals the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # `ps`, `top` and the GPU benchmark tell workers apart
        Path("/proc/self/comm").write_text(WORKER_NAME)
    from vidtag.decode import sample_frames

    backend = config.backend
    try:
        if backend == "nvdec":
            from vidtag.decode.nvdec_backend import default_pool

            nvdec = default_pool()  # the registered backend decodes with it
            nvdec.gpu_id = config.gpu_id
            nvdec.nvc()  # PyNvVideoCodec, or why not, before CUDA starts
            if config.cuda_waits != "auto":
                try:
                    set_cuda_waits(config.gpu_id, config.cuda_waits)
                except BackendUnavailable as exc:  # a performance setting: warn, decode on
                    why = f"decode worker {os.getpid()} keeps CUDA's own waits: {exc}"
                    print(why, file=sys.stderr, flush=True)
        if config.warmup:
            _warm_up(backend)
    except Exception as exc:
        results.send(("failed", " ".join(f"{type(exc).__name__}: {exc}".split())))
        return
    if config.warmup:
        for clip in examples if example_spec is not None else ():
            # Best effort: the backend works (above); an example it cannot decode costs nothing.
            with contextlib.suppress(Exception):
                sample_frames(clip, example_spec, None, backend)
    frames_fd = _frames_memfd()
    results.send(("ready", os.getpid(), probe is not None and _reads(probe), frames_fd))
    while True:
        try:
            msg = tasks.recv()
            data = tasks.recv_bytes() if msg is not None else b""
        except (EOFError, OSError):  # the parent is gone
            return
        except Exception as exc:  # a header that does not unpickle here: skip its input
            try:
                tasks.recv_bytes()
            except (EOFError, OSError):
                return
            results.send(("err", None, *_pack_error(exc)))
            continue
        if msg is None:
            return
        task_id, spec, limits, file, shared = msg
        try:
            if marker is not None and isinstance(file, SpoolRef):
                data, file = spooled_bytes(file), None  # the test hook reads the bytes
            if marker is not None and data.startswith(marker):
                data = _test_hook(data[len(marker) :])
            source = data if file is None else file
            began = time.monotonic()
            decoded = sample_frames(source, spec, limits, backend)
            layout = _write_frames(frames_fd, decoded.frames) if shared else None
            if layout is not None:
                decoded = replace(decoded, frames=NO_FRAMES)
            reply: tuple[Any, ...] = ("ok", task_id, decoded, layout, began)
        except Exception as exc:
            reply = ("err", task_id, *_pack_error(exc))
        try:
            results.send(reply)
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # the reply does not pickle
            results.send(("err", task_id, *_pack_error(exc)))


PROBE: Final = b"vidtag upload spool probe"
NO_FRAMES: Final = np.empty((0, 0, 0, 3), np.uint8)  # a reply's clip whose frames are in the memfd


def _frames_memfd() -> int | None:
    """The memfd this worker writes its replies' frames into, or None (not Linux, or refused)."""
    if not spool_supported():
        return None
    try:
        return os.memfd_create("vidtag-frames", os.MFD_CLOEXEC)
    except OSError:
        return None


def _write_frames(fd: int | None, frames: Any) -> tuple[tuple[int, ...], str] | None:
    """Write `frames` at the start of memfd `fd`: their (shape, dtype), or None when they go
    through the pipe instead (no memfd, not an array, or the memory refused)."""
    if fd is None or not isinstance(frames, np.ndarray):
        return None
    a = np.ascontiguousarray(frames)
    try:
        write_all(fd, a.reshape(-1).view(np.uint8).data)
    except OSError:
        return None
    return a.shape, a.dtype.str


def _read_frames(fd: int, layout: tuple[tuple[int, ...], str]) -> np.ndarray:
    """The frames a worker wrote with `_write_frames` into its memfd (opened here as `fd`)."""
    shape, dtype = layout
    out = np.empty(shape, np.dtype(dtype))
    flat = out.reshape(-1).view(np.uint8)
    done = 0
    while done < flat.nbytes:
        n = os.preadv(fd, [flat.data[done:]], done)
        if n <= 0:
            raise OSError(f"the worker's frames memfd ends at {done} of {flat.nbytes} bytes")
        done += n
    return out


def _reads(probe: SpoolRef) -> bool:
    """Whether this process can map the server's shared segments (a hardened /proc may say
    no: uploads then cross the pipe)."""
    try:
        return spooled_bytes(probe) == PROBE
    except (OSError, ValueError):
        return False


def _pack_error(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    tb = "".join(traceback.format_exception(exc))
    blob: bytes | None = None
    with contextlib.suppress(Exception):
        candidate = pickle.dumps(exc, protocol=_PROTOCOL)
        back = pickle.loads(candidate)
        if type(back) is type(exc) and str(back) == str(exc):
            blob = candidate
    return blob, f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), tb


def _unpack_error(blob: bytes | None, name: str, text: str, tb: str, pid: int) -> BaseException:
    exc: BaseException | None = None
    if blob is not None:
        with contextlib.suppress(Exception):
            exc = pickle.loads(blob)
    if not isinstance(exc, BaseException):
        exc = RuntimeError(f"{name}: {text}")
    exc.add_note(f"raised in decode worker {pid}:\n{tb.rstrip()}")
    return exc


def _test_hook(rest: bytes) -> bytes:
    command, _, data = rest.partition(b":")
    name, _, arg = command.partition(b"=")
    if name == b"kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif name == b"segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif name == b"exit":
        os._exit(3)
    elif name == b"hang":
        while True:
            time.sleep(3600)
    elif name == b"sleep":
        time.sleep(float(arg))
    return data


def _warm_up(backend: str) -> None:
    """Encode and decode a tiny clip: the first decode in a process costs several warm ones
    (with NVDEC, CUDA's start and the session's creation). Raises what a decoder other than
    PyAV raised."""
    from vidtag.decode import sample_frames

    side = 32 if backend == "pyav" else 160  # within every NVDEC codec's minimum size
    try:
        clip = encode_in_memory(
            side,
            side,
            8,
            lambda i: np.full((side, side, 3), 30 + 20 * i, dtype=np.uint8),
            options={"preset": "ultrafast", "g": "4"},
            rate=8,
        )
    except Exception:  # no encoder in this FFmpeg build: skip, the first request pays instead
        return
    try:
        sample_frames(clip, SamplingSpec(frames=2, height=16, width=16), None, backend)
    except Exception:
        if backend != "pyav":
            raise


# --------------------------------------------------------------------------------------------
# Event-loop side.


@dataclass(eq=False)
class _Task:
    id: int
    spec: SamplingSpec
    limits: DecodeLimits
    file: Input | None  # what the worker opens itself, or None: `data`
    data: bytes | bytearray | memoryview  # the input's bytes (spooled or piped)
    future: asyncio.Future[DecodedResult]
    deadline: float | None  # time.monotonic()
    deadline_timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    pid: int
    tasks: Connection  # parent's write end
    results: Connection  # parent's read end
    ready: asyncio.Future[None]
    writer: ThreadPoolExecutor  # one thread: sends in order, then closes `tasks`
    reader: threading.Thread | None = None
    task: _Task | None = None
    timer: asyncio.TimerHandle | None = None
    done: int = 0
    retiring: bool = False  # recycled: finishes nothing more, exits on its own
    killed: bool = False  # killed for a timeout; its task has been failed already
    closed: bool = False
    failure: str | None = None  # why its warm-up failed (the worker then exits)
    maps_spool: bool = False  # it maps the pool's shared segments (said when ready)
    frames_fd: int | None = None  # its frames memfd, opened here (by the reader, when ready)
    segment: Segment | None = None  # holding its task's upload until it replies or exits

    @property
    def serving(self) -> bool:
        return (
            self.ready.done()
            and not self.ready.cancelled()
            and self.ready.exception() is None
            and not (self.retiring or self.killed or self.closed)
        )

    @property
    def idle(self) -> bool:
        return self.serving and self.task is None


def _widen(conn: Connection) -> None:
    """Give the pipe behind `conn` a buffer of up to 1 MiB (Linux; the system's cap, usually
    1 MiB, applies), instead of 64 KiB: a 3.7 MB upload then crosses in a few writes, not ~60
    (a round trip of 3.7 MB to a worker: 10.9 -> 5.8 ms, median, on a busy 2-core machine)."""
    size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if size is None:
        return
    try:
        cap = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        cap = PIPE_BUFFER
    with contextlib.suppress(OSError):
        fcntl.fcntl(conn.fileno(), size, min(PIPE_BUFFER, cap))


def _send(conn: Connection, *messages: bytes | bytearray | memoryview) -> None:
    with contextlib.suppress(OSError, ValueError):  # worker gone: its reader reports the exit
        for payload in messages:
            conn.send_bytes(payload)  # no copy: written to the pipe from the buffer


def _deliver(
    conn: Connection,
    head: tuple[int, SamplingSpec, DecodeLimits, Input | None, bool],
    data: bytes | bytearray | memoryview,
    segment: Segment | None,
) -> None:
    """Writer thread: a task's header, then its bytes through the pipe unless they went into
    `segment` (then the header names it instead)."""
    file = head[3]
    if segment is not None:
        try:
            segment.fill()
            file, data = segment.ref(), b""
        except OSError as exc:  # memory refused: the pipe carries them
            log.warning("upload spool write failed (%s); sending the upload through the pipe", exc)
    _send(conn, pickle.dumps((*head[:3], file, head[4]), _PROTOCOL), data)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"signal {-code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class DecodePool:
    """Worker processes that decode uploads; see the module docstring for the failure model.

    `start`, `decode` and `stop` must be awaited on one event loop. `decode` is safe to cancel:
    a queued task is dropped, a running one finishes in its worker and its result is discarded.
    """

    def __init__(self, config: DecodePoolConfig | None = None) -> None:
        self.config = config or DecodePoolConfig()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[_Worker] = []
        self._queue: collections.deque[_Task] = collections.deque()
        self._marker: bytes | None = None
        self._next_id = 0
        self._running = False
        self._stopping = False
        self._start_failures = 0  # consecutive replacements that died before becoming ready
        self._starting = False  # start() waits for the first workers: it reports, no retries
        self._restarts = 0
        self._recycled = 0
        self._examples: tuple[bytes, ...] = ()
        self._example_spec: SamplingSpec | None = None
        self._spool: UploadSpool | None = None
        self._probe: SpoolRef | None = None
        self._spool_refused = False  # a worker could not map the probe (warned)
        self._frames_refused = False  # a worker's frames memfd could not be opened (warned)

    # -- metrics ------------------------------------------------------------------------------

    @property
    def workers_alive(self) -> int:
        """Workers that are ready and take tasks (idle or busy)."""
        return sum(1 for w in self._workers if w.serving)

    @property
    def restarts(self) -> int:
        """Workers replaced after a crash, a kill (timeout or external) or a failed start."""
        return self._restarts

    @property
    def recycled(self) -> int:
        """Workers replaced after `max_tasks_per_worker` tasks."""
        return self._recycled

    @property
    def busy(self) -> int:
        return sum(1 for w in self._workers if w.task is not None)

    @property
    def idle(self) -> int:
        """Workers ready for a task now."""
        return sum(w.idle for w in self._workers)

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def spool_bytes(self) -> int:
        """Shared memory held for uploads (in use and kept for reuse)."""
        return self._spool.allocated if self._spool is not None else 0

    @property
    def spooled(self) -> int:
        """Uploads copied into shared memory for the workers so far (one split between
        workers once)."""
        return self._spool.spooled if self._spool is not None else 0

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return tuple(w.pid for w in self._workers if not w.closed)

    @property
    def busy_pids(self) -> tuple[int, ...]:
        return tuple(w.pid for w in self._workers if w.task is not None)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(
        self, examples: tuple[bytes, ...] = (), example_spec: SamplingSpec | None = None
    ) -> None:
        """Spawn the workers and wait until each has imported the decoder (and warmed up).

        With `examples` and `example_spec` (and `warmup` on), each worker, replacements too,
        then decodes every example clip once with that spec before it takes work: with NVDEC
        its sessions and GPU buffers reach the sizes that traffic would grow them to."""
        if self._loop is not None:
            raise RuntimeError("a DecodePool can be started once")
        self._examples, self._example_spec = examples, example_spec
        self._loop = asyncio.get_running_loop()
        marker = os.environ.get(TEST_CRASH_MARKER_ENV)
        self._marker = marker.encode() if marker else None
        if self._marker is not None:
            log.warning("decode pool test hook is on (%s is set)", TEST_CRASH_MARKER_ENV)
        self._running = True
        self._starting = True
        self._open_spool()
        try:
            first = [self._spawn() for _ in range(self.config.workers)]
            await asyncio.wait_for(
                asyncio.gather(*(w.ready for w in first)), self.config.start_timeout_s
            )
            self._starting = False
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError):
                raise RuntimeError(
                    f"decode workers not ready after {self.config.start_timeout_s:g} s"
                ) from exc
            raise

    async def stop(self, timeout: float = 5.0) -> None:
        """Fail queued and running requests with UNAVAILABLE and end every worker process
        (SIGTERM, then SIGKILL after `timeout` seconds)."""
        if not self._running:
            return
        self._running = False
        self._stopping = True
        gone = RpcFailure(grpc.StatusCode.UNAVAILABLE, "decode pool is shutting down")
        while self._queue:
            self._fail(self._queue.popleft(), gone)
        workers = list(self._workers)
        for w in workers:
            if w.task is not None:
                self._fail(w.task, gone)
                w.task = None
            self._cancel_timer(w)
            with contextlib.suppress(Exception):
                w.process.terminate()
        await asyncio.to_thread(_reap, workers, timeout)
        for w in workers:
            self._close(w)
        self._workers.clear()
        if self._spool is not None:
            self._spool.close()

    # -- requests -----------------------------------------------------------------------------

    async def decode(
        self,
        data: Input,
        spec: SamplingSpec,
        limits: DecodeLimits,
        deadline: float | None = None,
    ) -> DecodedResult:
        """Decode `data` in a worker with the pool's backend. Bytes are sent to the worker; a
        file (a path, or a `FileRef` the worker opens only if it is the same file) is opened
        by the worker, which reads only what it decodes.

        `deadline` is on the `time.monotonic()` clock. Raises RpcFailure (see the module
        docstring) or the worker's own exception.
        """
        loop = self._loop
        if not self._running or loop is None:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "decode pool is not running")
        if deadline is not None and time.monotonic() >= deadline:
            raise RpcFailure(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before work began"
            )
        if len(self._queue) >= self.config.max_pending and self._idle() is None:
            raise RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"all {self.config.workers} decode workers are busy and "
                f"{len(self._queue)} requests are waiting; try again later",
            )
        self._next_id += 1
        file, payload = (
            (None, data) if isinstance(data, bytes | bytearray | memoryview) else (data, b"")
        )
        task = _Task(self._next_id, spec, limits, file, payload, loop.create_future(), deadline)
        if deadline is not None:
            task.deadline_timer = loop.call_later(
                max(deadline - time.monotonic(), 0.0), self._on_deadline, task
            )
        self._queue.append(task)
        self._dispatch()
        try:
            return await task.future
        finally:
            if task.deadline_timer is not None:
                task.deadline_timer.cancel()
            if task.future.cancelled() and task in self._queue:
                self._queue.remove(task)

    def _idle(self) -> _Worker | None:
        return next((w for w in self._workers if w.idle), None)

    def _dispatch(self) -> None:
        while self._queue and (worker := self._idle()) is not None:
            task = self._queue.popleft()
            if task.future.done():
                continue
            if task.deadline is not None and time.monotonic() >= task.deadline:
                self._fail(task, RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, _QUEUED_LATE))
                continue
            assert self._loop is not None
            worker.task = task
            worker.timer = self._loop.call_later(
                self.config.task_timeout_s, self._on_timeout, worker, task
            )
            if task.file is None and worker.maps_spool and self._spool is not None:
                worker.segment = self._spool.put(task.data)
            head = (task.id, task.spec, task.limits, task.file, worker.frames_fd is not None)
            worker.writer.submit(_deliver, worker.tasks, head, task.data, worker.segment)
            task.data = b""

    def _on_deadline(self, task: _Task) -> None:
        if task.future.done():
            return
        if task in self._queue:
            self._queue.remove(task)
            self._fail(task, RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, _QUEUED_LATE))
        else:  # running: the worker finishes it (bounded by task_timeout_s); nobody waits
            self._fail(
                task,
                RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired while decoding"),
            )

    def _on_timeout(self, worker: _Worker, task: _Task) -> None:
        if worker.task is not task:
            return
        worker.task, worker.timer, worker.killed = None, None, True
        seconds = self.config.task_timeout_s
        log.error("decode worker %d took over %g s on one input; killing it", worker.pid, seconds)
        self._fail(
            task,
            RpcFailure(
                grpc.StatusCode.INTERNAL,
                f"decoding this input took longer than {seconds:g} s; "
                "the decode worker was killed and replaced",
            ),
        )
        with contextlib.suppress(Exception):
            worker.process.kill()  # the reader sees EOF; _on_exit spawns the replacement

    # -- worker events (posted by reader threads) -------------------------------------------

    def _on_ready(self, worker: _Worker, maps_spool: bool) -> None:
        worker.maps_spool = maps_spool
        if self._probe is not None and not maps_spool and not self._spool_refused:
            self._spool_refused = True  # once per pool: every worker would say the same
            log.warning(
                "decode worker %d cannot map the server's upload segments (/proc/%d/fd); "
                "uploads cross the pipe instead",
                worker.pid,
                os.getpid(),
            )
        if not worker.ready.done():
            worker.ready.set_result(None)
        self._start_failures = 0
        self._dispatch()

    def _on_reply(self, worker: _Worker, task_id: int | None, outcome: Any) -> None:
        task = worker.task
        if task is None or (task_id is not None and task.id != task_id):
            return  # a reply for a task already failed (timeout) or from a stopped pool
        self._cancel_timer(worker)
        self._release(worker)  # it has read its input
        worker.task = None
        worker.done += 1
        if isinstance(outcome, BaseException):
            self._fail(task, outcome)
        elif not task.future.done():
            task.future.set_result(outcome)
        limit = self.config.max_tasks_per_worker
        if limit and worker.done >= limit and self._running:
            worker.retiring = True
            worker.writer.submit(_send, worker.tasks, pickle.dumps(None, _PROTOCOL))
            self._recycled += 1
            self._replace()
        self._dispatch()

    def _on_exit(self, worker: _Worker, exitcode: int | None) -> None:
        if worker not in self._workers:
            return
        self._workers.remove(worker)
        self._cancel_timer(worker)
        self._release(worker)
        self._close(worker)
        task, worker.task = worker.task, None
        how = _describe_exit(exitcode)
        started = worker.ready.done()
        if not started:
            why = f": {worker.failure}" if worker.failure else ""
            worker.ready.set_exception(
                RuntimeError(f"decode worker {worker.pid} exited during start-up ({how}){why}")
            )
            worker.ready.exception()  # retrieved: only start() may be waiting on it
            if self._starting:
                return  # start() raises it
        if self._stopping:
            if task is not None:
                self._fail(task, RpcFailure(grpc.StatusCode.UNAVAILABLE, "decode pool stopped"))
            return
        if worker.retiring:
            return
        if task is not None:
            log.warning("decode worker %d crashed (%s) on a request; replacing it", worker.pid, how)
            self._fail(
                task,
                RpcFailure(
                    grpc.StatusCode.INTERNAL,
                    f"decode worker crashed ({how}) while decoding this input; it was replaced",
                ),
            )
        elif started and not worker.killed:
            log.warning("decode worker %d exited (%s) while idle; replacing it", worker.pid, how)
        self._restarts += 1
        if started:
            self._replace()
        else:
            self._start_failures += 1
            delay = min(0.5 * 2 ** (self._start_failures - 1), 30.0)
            log.error(
                "decode worker failed to start (%s%s); retrying in %g s",
                how,
                f": {worker.failure}" if worker.failure else "",
                delay,
            )
            self._schedule_replace(delay)
        self._dispatch()

    # -- helpers ------------------------------------------------------------------------------

    def _open_spool(self) -> None:
        """Shared memory for uploads, if the config and the platform allow (see `spool`); the
        workers report at start whether they can map its probe."""
        if not self.config.spool_bytes or not spool_supported():
            return
        self._spool = UploadSpool(self.config.spool_bytes)
        with contextlib.suppress(OSError):  # no probe: every worker uses the pipe
            self._probe = self._spool.probe(PROBE)

    def _release(self, worker: _Worker) -> None:
        if worker.segment is not None and self._spool is not None:
            self._spool.release(worker.segment)
        worker.segment = None

    def _replace(self) -> None:
        if not self._running:
            return
        try:
            self._spawn()
        except Exception:
            self._start_failures += 1
            delay = min(0.5 * 2 ** (self._start_failures - 1), 30.0)
            log.exception("could not spawn a decode worker; retrying in %g s", delay)
            self._schedule_replace(delay)

    def _schedule_replace(self, delay: float) -> None:
        assert self._loop is not None
        self._loop.call_later(delay, self._replace)  # a no-op once stop() has begun

    def _spawn(self) -> _Worker:
        assert self._loop is not None
        ctx = multiprocessing.get_context("spawn")
        task_r, task_w = ctx.Pipe(duplex=False)
        result_r, result_w = ctx.Pipe(duplex=False)
        _widen(task_w)
        _widen(result_w)
        process = ctx.Process(
            target=_worker_main,
            args=(
                task_r,
                result_w,
                self._marker,
                self.config,
                self._examples,
                self._example_spec,
                self._probe,
            ),
            name="vidtag-decode",
            daemon=True,
        )
        try:
            process.start()
        finally:
            task_r.close()  # the child holds its own copies: EOF now means the child exited
            result_w.close()
        assert process.pid is not None
        worker = _Worker(
            process=process,
            pid=process.pid,
            tasks=task_w,
            results=result_r,
            ready=self._loop.create_future(),
            writer=ThreadPoolExecutor(1, thread_name_prefix=f"decode-send-{process.pid}"),
        )
        worker.reader = threading.Thread(
            target=self._read, args=(worker,), name=f"decode-recv-{process.pid}", daemon=True
        )
        self._workers.append(worker)
        worker.reader.start()
        return worker

    def _read(self, worker: _Worker) -> None:
        """Reader thread: post every reply, then the exit status once the pipe reaches EOF."""
        conn = worker.results
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # a reply that does not unpickle here
                self._post(self._on_reply, worker, None, RuntimeError(f"unreadable reply: {exc}"))
                continue
            kind = msg[0]
            if kind == "ready":
                worker.frames_fd = self._open_frames(worker, msg[3])
                self._post(self._on_ready, worker, bool(msg[2]))
            elif kind == "failed":
                worker.failure = msg[1]  # read by _on_exit, posted after this
            elif kind == "ok":
                clip, layout = msg[2], msg[3]
                if layout is not None and worker.frames_fd is not None:
                    try:
                        clip = replace(clip, frames=_read_frames(worker.frames_fd, layout))
                    except (OSError, ValueError) as exc:
                        why = RuntimeError(f"could not read the decoded frames: {exc}")
                        self._post(self._on_reply, worker, msg[1], why)
                        continue
                self._post(self._on_reply, worker, msg[1], DecodedResult(clip, msg[4]))
            else:
                self._post(
                    self._on_reply,
                    worker,
                    msg[1],
                    _unpack_error(msg[2], msg[3], msg[4], msg[5], worker.pid),
                )
        process = worker.process
        process.join(5.0)
        if process.exitcode is None:  # closed its pipe but did not exit: make sure it does
            with contextlib.suppress(Exception):
                process.kill()
            process.join(5.0)
        conn.close()
        if worker.frames_fd is not None:
            os.close(worker.frames_fd)
        self._post(self._on_exit, worker, process.exitcode)

    def _open_frames(self, worker: _Worker, fd: int | None) -> int | None:
        """Open the worker's frames memfd (reader thread), or None: its frames cross the
        pipe (no memfd there, or a hardened /proc here)."""
        if fd is None:
            return None
        try:
            return os.open(f"/proc/{worker.pid}/fd/{fd}", READ)
        except OSError as exc:
            if not self._frames_refused:
                self._frames_refused = True  # once per pool: every worker would say the same
                log.warning(
                    "cannot open decode worker %d's frames memfd (%s); frames cross the pipe",
                    worker.pid,
                    exc,
                )
            return None

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self._loop.call_soon_threadsafe(callback, *args)

    def _close(self, worker: _Worker) -> None:
        if worker.closed:
            return
        worker.closed = True
        worker.writer.submit(worker.tasks.close)
        worker.writer.shutdown(wait=False)

    @staticmethod
    def _cancel_timer(worker: _Worker) -> None:
        if worker.timer is not None:
            worker.timer.cancel()
            worker.timer = None

    @staticmethod
    def _fail(task: _Task, exc: BaseException) -> None:
        if not task.future.done():
            task.future.set_exception(exc)


_QUEUED_LATE: Final = "deadline expired while queued"


def _reap(workers: list[_Worker], timeout: float) -> None:
    """Wait for the readers (which reap their processes); SIGKILL whatever outlives `timeout`."""
    end = time.monotonic() + timeout
    for w in workers:
        if w.reader is not None:
            w.reader.join(max(end - time.monotonic(), 0.0))
    for w in workers:
        if w.reader is not None and w.reader.is_alive():
            with contextlib.suppress(Exception):
                w.process.kill()
            w.reader.join(timeout)
