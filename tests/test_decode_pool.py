"""DecodePool: results equal in-process decoding, worker errors keep their type and message, and
a crashed, killed or hung worker fails only its own request and is replaced."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest

from vidtag.decode import DecodeLimits, SamplingSpec, sample_frames
from vidtag.decode.source import FileRef, Input, SpoolRef
from vidtag.errors import InvalidVideo, LimitExceeded
from vidtag.runtime.device import nvdec_available
from vidtag.server import decode_pool
from vidtag.server.background import LoopThread
from vidtag.server.decode_pool import (
    PIPE_BUFFER,
    PROBE,
    TEST_CRASH_MARKER_ENV,
    WORKER_NAME,
    DecodedResult,
    DecodePool,
    DecodePoolConfig,
    _pack_error,
    _unpack_error,
    _widen,
)
from vidtag.server.errors import RpcFailure
from vidtag.server.spool import Segment
from vidtag.server.spool import supported as spool_supported

T = TypeVar("T")
MARKER = b"@@vidtag-decode-pool-test@@"
SPEC = SamplingSpec(frames=4, height=64, width=32)
LIMITS = DecodeLimits()
TIMEOUT_S = 2.0


class Loop(LoopThread):
    """One event loop on a thread for the whole module: the shared pool lives on it."""

    def read(self, fn: Callable[[], T]) -> T:
        async def get() -> T:
            return fn()

        return self.run(get())

    def wait_until(self, cond: Callable[[], bool], timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while not self.read(cond):
            assert time.monotonic() < end, "condition not met in time"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def lt() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def _start(lt: Loop, config: DecodePoolConfig, *, hook: bool) -> DecodePool:
    pool = DecodePool(config)
    old = os.environ.pop(TEST_CRASH_MARKER_ENV, None)
    if hook:
        os.environ[TEST_CRASH_MARKER_ENV] = MARKER.decode()
    try:
        lt.run(pool.start())
    finally:
        os.environ.pop(TEST_CRASH_MARKER_ENV, None)
        if old is not None:
            os.environ[TEST_CRASH_MARKER_ENV] = old
    return pool


@pytest.fixture(scope="module")
def pool(lt: Loop) -> Iterator[DecodePool]:
    """Two workers with the test hook on, shared by the tests below."""
    p = _start(lt, DecodePoolConfig(workers=2, max_pending=6, task_timeout_s=TIMEOUT_S), hook=True)
    yield p
    lt.run(p.stop())


def decode(pool: DecodePool, data: Input, **kw: Any) -> Coroutine[Any, Any, DecodedResult]:
    return pool.decode(data, kw.pop("spec", SPEC), kw.pop("limits", LIMITS), **kw)


def slow(clip: bytes, seconds: float = 1.0) -> bytes:
    return MARKER + b"sleep=%g:" % seconds + clip


def healthy(lt: Loop, pool: DecodePool, clip: bytes) -> None:
    """Back to full strength, and serving."""
    lt.wait_until(lambda: pool.workers_alive == 2 and pool.busy == 0)
    assert lt.run(decode(pool, clip)).clip.frames.shape == (4, 64, 32, 3)
    spool = pool._spool
    assert spool is None or lt.read(lambda: spool.in_use) == 0  # every upload released


def test_frames_match_in_process_decoding(lt: Loop, pool: DecodePool, clip_bytes: bytes) -> None:
    for pid in lt.read(lambda: pool.worker_pids):  # named for ps, top and the GPU benchmark
        comm = Path(f"/proc/{pid}/comm")
        assert not comm.exists() or comm.read_text().strip() == WORKER_NAME
    got = lt.run(decode(pool, clip_bytes))
    ref = sample_frames(clip_bytes, SPEC, LIMITS)
    assert np.array_equal(got.clip.frames, ref.frames)
    assert got.clip.timestamps == ref.timestamps and got.clip.codec == ref.codec


def test_inputs_larger_than_a_pipe_arrive_whole(
    lt: Loop, pool: DecodePool, clip_bytes: bytes
) -> None:
    """The input goes to the worker as a raw message after the task's header: a clip padded
    with a 6 MB `free` box (and a second, different one at the same time) decodes as the clip."""
    pad = 6 << 20
    big = clip_bytes + struct.pack(">I4s", 8 + pad, b"free") + bytes(pad)
    ref = sample_frames(clip_bytes, SPEC, LIMITS)

    async def both() -> list[DecodedResult]:
        return list(await asyncio.gather(decode(pool, big), decode(pool, big[: len(clip_bytes)])))

    for got in lt.run(both()):
        assert np.array_equal(got.clip.frames, ref.frames)
    assert lt.read(lambda: pool.restarts) == 0


def test_uploads_cross_in_shared_memory_or_the_pipe(
    lt: Loop,
    pool: DecodePool,
    clip_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The module's pool spools uploads (one copy however many workers read it, segments
    reused); one with spool_bytes=0, one whose cap the input exceeds and one whose workers
    cannot map the segments (said once in the log) use the pipe, with the same frames, as
    does an upload whose write to the spool is refused."""
    if not spool_supported():
        pytest.skip("memfd_create and /proc (Linux)")
    want = sample_frames(clip_bytes, SPEC, LIMITS).frames
    before = lt.read(lambda: (pool.spooled, pool.spool_bytes))

    async def twice() -> list[DecodedResult]:  # one object to both workers, as decode shares do
        return list(await asyncio.gather(decode(pool, clip_bytes), decode(pool, clip_bytes)))

    for got in lt.run(twice()):
        assert np.array_equal(got.clip.frames, want)
    after = lt.read(lambda: (pool.spooled, pool.spool_bytes))
    assert after[0] == before[0] + 1
    lt.run(decode(pool, clip_bytes))
    assert lt.read(lambda: pool.spool_bytes) == after[1] > 0  # reused, not grown

    def unreadable(self: DecodePool) -> None:
        opened(self)
        self._probe = SpoolRef(os.getpid(), 1 << 20, len(PROBE))  # no such descriptor

    opened = DecodePool._open_spool
    configs = {"spool off": DecodePoolConfig(workers=1, spool_bytes=0),
               "over the cap": DecodePoolConfig(workers=1, spool_bytes=len(clip_bytes) // 2),
               "cannot map": DecodePoolConfig(workers=1)}  # fmt: skip
    for name, config in configs.items():
        caplog.clear()
        with monkeypatch.context() as m:
            if name == "cannot map":
                m.setattr(DecodePool, "_open_spool", unreadable)
            other = _start(lt, config, hook=False)
        try:
            assert np.array_equal(lt.run(decode(other, clip_bytes)).clip.frames, want), name
            assert lt.read(lambda o=other: o.spooled) == 0, name
            warned = "cannot map the server's upload segments" in caplog.text
            assert warned == (name == "cannot map"), name
        finally:
            lt.run(other.stop())

    def refuse(self: Segment) -> None:
        raise OSError(errno.ENOSPC, "no space left")

    monkeypatch.setattr(Segment, "fill", refuse)  # memory refused: this upload takes the pipe
    assert np.array_equal(lt.run(decode(pool, clip_bytes)).clip.frames, want)
    assert lt.read(lambda: pool.busy) == 0
    assert "upload spool write failed ([Errno 28] no space left)" in caplog.text


def test_frames_come_back_through_a_memfd_or_the_pipe(
    lt: Loop,
    pool: DecodePool,
    clip_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The workers write their frames into a memfd the server reads; where the server cannot
    open it (a hardened /proc), it says so once and the frames cross the pipe: the same
    frames either way."""
    if not spool_supported():
        pytest.skip("memfd_create and /proc (Linux)")
    want = sample_frames(clip_bytes, SPEC, LIMITS).frames
    reads: list[tuple[Any, ...]] = []
    read_frames = decode_pool._read_frames

    def counted(fd: int, layout: tuple[tuple[int, ...], str]) -> np.ndarray:
        reads.append(layout)
        return read_frames(fd, layout)

    monkeypatch.setattr(decode_pool, "_read_frames", counted)  # the reader threads call it
    assert all(w.frames_fd is not None for w in lt.read(lambda: list(pool._workers)))
    for data in (clip_bytes, MARKER + b"sleep=0:" + clip_bytes):
        assert np.array_equal(lt.run(decode(pool, data)).clip.frames, want)
    assert reads == [(want.shape, "|u1")] * 2

    opened = DecodePool._open_frames

    def refused(self: DecodePool, worker: Any, fd: int | None) -> int | None:
        return opened(self, worker, 1 << 20)  # no such descriptor in the worker

    caplog.clear()
    with monkeypatch.context() as m:
        m.setattr(DecodePool, "_open_frames", refused)
        other = _start(lt, DecodePoolConfig(workers=2), hook=False)
    try:

        async def both() -> list[DecodedResult]:
            return list(await asyncio.gather(decode(other, clip_bytes), decode(other, clip_bytes)))

        for got in lt.run(both()):
            assert np.array_equal(got.clip.frames, want)
        assert all(w.frames_fd is None for w in lt.read(lambda: list(other._workers)))
        assert caplog.text.count("frames memfd") == 1 and len(reads) == 2
    finally:
        lt.run(other.stop())


def test_a_burst_of_uploads_shares_a_small_spool(lt: Loop, clip_bytes: bytes) -> None:
    """More uploads than workers, of several sizes, some the same object twice (as a clip's
    shares are), through a spool with room for two segments: each decodes as its bytes, the
    spool never exceeds its cap and holds no upload afterwards."""
    if not spool_supported():
        pytest.skip("memfd_create and /proc (Linux)")
    cap = 2 * (1 << (len(clip_bytes) + (1 << 20) - 1).bit_length())
    pool = _start(lt, DecodePoolConfig(workers=2, spool_bytes=cap), hook=False)
    pad = struct.pack(">I4s", 8 + (1 << 20), b"free") + bytes(1 << 20)
    inputs = [clip_bytes, clip_bytes + pad, bytes(bytearray(clip_bytes))]  # 3 objects
    want = sample_frames(clip_bytes, SPEC, LIMITS).frames
    peak = [0]

    async def burst() -> list[DecodedResult]:
        async def watch() -> None:
            while True:
                peak[0] = max(peak[0], pool.spool_bytes)
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        try:
            calls = [decode(pool, inputs[i % 3]) for i in range(9)] + [decode(pool, inputs[0])]
            return list(await asyncio.gather(*calls))
        finally:
            watcher.cancel()

    try:
        for got in lt.run(burst()):
            assert np.array_equal(got.clip.frames, want)
        spool = pool._spool
        assert spool is not None and lt.read(lambda: spool.in_use) == 0
        assert 0 < peak[0] <= cap and lt.read(lambda: pool.spooled) >= 2
    finally:
        lt.run(pool.stop())


def test_files_are_opened_by_the_worker(
    lt: Loop, pool: DecodePool, clip_bytes: bytes, tmp_path: Path
) -> None:
    """A file is named to the worker, not sent: the worker reads it, and refuses a checked
    file (FileRef) whose name now leads to another one."""
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip_bytes)
    info = path.stat()
    ref = FileRef(str(path), info.st_dev, info.st_ino, info.st_size)
    want = sample_frames(clip_bytes, SPEC, LIMITS).frames
    for source in (path, ref):
        assert np.array_equal(lt.run(decode(pool, source)).clip.frames, want)
    (tmp_path / "other.mp4").write_bytes(clip_bytes)
    os.replace(tmp_path / "other.mp4", path)
    with pytest.raises(InvalidVideo, match="replaced after it was checked"):
        lt.run(decode(pool, ref))


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="Linux pipe sizes only")
def test_worker_pipes_are_widened() -> None:
    """A pipe gets the pool's buffer (or the system's cap, if lower) instead of 64 KiB."""
    import multiprocessing

    r, w = multiprocessing.get_context("spawn").Pipe(duplex=False)
    try:
        before = fcntl.fcntl(w.fileno(), fcntl.F_GETPIPE_SZ)
        _widen(w)
        cap = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        after = fcntl.fcntl(r.fileno(), fcntl.F_GETPIPE_SZ)  # one pipe: either end says so
        assert after == max(before, min(PIPE_BUFFER, cap)) and after > 65536
    finally:
        r.close()
        w.close()


def test_errors_keep_type_and_message(lt: Loop, pool: DecodePool, clip_bytes: bytes) -> None:
    garbage = b"not a video at all" * 50
    with pytest.raises(InvalidVideo) as local:
        sample_frames(garbage, SPEC, LIMITS)
    with pytest.raises(InvalidVideo) as remote:
        lt.run(decode(pool, garbage))
    assert type(remote.value) is type(local.value) and str(remote.value) == str(local.value)

    small = DecodeLimits(max_bytes=1000)
    with pytest.raises(LimitExceeded) as local_limit:
        sample_frames(clip_bytes, SPEC, small)
    with pytest.raises(LimitExceeded) as remote_limit:
        lt.run(decode(pool, clip_bytes, limits=small))
    assert str(remote_limit.value) == str(local_limit.value)

    assert lt.read(lambda: pool.restarts) == 0  # errors are not crashes


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        ("nope", "UnknownName: unknown decode backend 'nope'"),
        ("nvdec", "BackendUnavailable: decode backend 'nvdec' needs"),
    ],
)
def test_a_failed_warm_up_fails_the_start_with_its_reason(
    lt: Loop, backend: str, reason: str
) -> None:
    """Workers of a backend other than PyAV that cannot decode (here NVDEC without
    PyNvVideoCodec or a GPU) end the pool's start with the worker's reason, not a bare exit."""
    if backend == "nvdec" and nvdec_available():
        pytest.skip("this machine can decode with NVDEC")
    pool = DecodePool(DecodePoolConfig(workers=2, backend=backend, start_timeout_s=60))
    with pytest.raises(RuntimeError, match=f"exited during start-up .*{reason}"):
        lt.run(pool.start())
    assert lt.read(lambda: pool.workers_alive) == 0


class _Picky(Exception):
    def __init__(self, *, why: str) -> None:  # keyword-only: does not unpickle
        super().__init__(why)


def test_unpicklable_error_becomes_runtime_error() -> None:
    try:
        raise _Picky(why="odd failure")
    except _Picky as exc:
        blob, name, text, tb = _pack_error(exc)
    assert blob is None
    back = _unpack_error(blob, name, text, tb, 123)
    assert type(back) is RuntimeError and str(back) == f"{__name__}._Picky: odd failure"
    assert "decode worker 123" in back.__notes__[0]


@pytest.mark.parametrize(("command", "signum"), [(b"kill", 9), (b"segv", 11)])
def test_crash_fails_only_its_request(
    lt: Loop, pool: DecodePool, clip_bytes: bytes, command: bytes, signum: int
) -> None:
    restarts = lt.read(lambda: pool.restarts)

    async def burst() -> list[Any]:
        good = [decode(pool, clip_bytes) for _ in range(5)]
        bad = decode(pool, MARKER + command + b":" + clip_bytes)
        return await asyncio.gather(*good[:2], bad, *good[2:], return_exceptions=True)

    results = lt.run(burst())
    crash = results.pop(2)
    assert isinstance(crash, RpcFailure) and crash.code is grpc.StatusCode.INTERNAL
    assert f"decode worker crashed (signal {signum}, " in crash.message
    assert "it was replaced" in crash.message
    assert all(isinstance(r, DecodedResult) for r in results)
    healthy(lt, pool, clip_bytes)
    assert lt.read(lambda: pool.restarts) == restarts + 1


def test_worker_killed_from_outside(lt: Loop, pool: DecodePool, clip_bytes: bytes) -> None:
    victim = lt.submit(decode(pool, slow(clip_bytes)))
    lt.wait_until(lambda: len(pool.busy_pids) == 1)
    pid = lt.read(lambda: pool.busy_pids)[0]
    other = lt.submit(decode(pool, clip_bytes))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RpcFailure) as failure:
        victim.result(10)
    assert failure.value.code is grpc.StatusCode.INTERNAL
    assert "signal 9, SIGKILL" in failure.value.message
    assert isinstance(other.result(10), DecodedResult)
    healthy(lt, pool, clip_bytes)
    assert pid not in lt.read(lambda: pool.worker_pids)


def test_pending_cap(lt: Loop, pool: DecodePool, clip_bytes: bytes) -> None:
    async def flood() -> tuple[list[Any], BaseException | None, int]:
        busy = [asyncio.ensure_future(decode(pool, slow(clip_bytes))) for _ in range(2)]
        queued = [asyncio.ensure_future(decode(pool, clip_bytes)) for _ in range(6)]
        await asyncio.sleep(0.05)
        pending = pool.pending
        try:
            await decode(pool, clip_bytes)
            refused = None
        except RpcFailure as exc:
            refused = exc
        return await asyncio.gather(*busy, *queued, return_exceptions=True), refused, pending

    results, refused, pending = lt.run(flood())
    assert pending == 6
    assert isinstance(refused, RpcFailure) and refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert all(isinstance(r, DecodedResult) for r in results)


def test_deadline_passed_while_queued(lt: Loop, pool: DecodePool, clip_bytes: bytes) -> None:
    async def late() -> tuple[BaseException | None, float]:
        busy = [asyncio.ensure_future(decode(pool, slow(clip_bytes))) for _ in range(2)]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        try:
            await decode(pool, clip_bytes, deadline=t0 + 0.2)
            failure = None
        except RpcFailure as exc:
            failure = exc
        waited = time.monotonic() - t0
        await asyncio.gather(*busy)
        return failure, waited

    failure, waited = lt.run(late())
    assert isinstance(failure, RpcFailure) and failure.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert failure.message == "deadline expired while queued"
    assert 0.15 < waited < 0.8  # failed when the deadline passed, not when a worker freed up
    with pytest.raises(RpcFailure) as already:
        lt.run(decode(pool, clip_bytes, deadline=time.monotonic() - 1))
    assert already.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_hung_worker_is_killed_and_replaced(lt: Loop, pool: DecodePool, clip_bytes: bytes) -> None:
    restarts = lt.read(lambda: pool.restarts)
    t0 = time.monotonic()
    with pytest.raises(RpcFailure) as failure:
        lt.run(decode(pool, MARKER + b"hang:"))
    assert TIMEOUT_S - 0.1 < time.monotonic() - t0 < TIMEOUT_S + 2
    assert failure.value.code is grpc.StatusCode.INTERNAL
    assert f"longer than {TIMEOUT_S:g} s" in failure.value.message
    healthy(lt, pool, clip_bytes)
    assert lt.read(lambda: pool.restarts) == restarts + 1


def _open_inodes() -> set[int]:
    """The inodes of this process's open file descriptors."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.add(os.stat(f"/proc/self/fd/{name}").st_ino)
    return found


def test_recycling_hook_off_and_stop(lt: Loop, clip_bytes: bytes) -> None:
    pool = _start(lt, DecodePoolConfig(workers=1, max_tasks_per_worker=2), hook=False)
    try:
        first = lt.read(lambda: pool.worker_pids)
        frames_fd = lt.read(lambda: pool._workers[0].frames_fd)
        memfd = os.fstat(frames_fd).st_ino if frames_fd is not None else None
        # The hook is off: a marker is just bytes that are not a video.
        with pytest.raises(InvalidVideo):
            lt.run(decode(pool, MARKER + b"kill:" + clip_bytes))
        lt.run(decode(pool, clip_bytes))  # second task: the worker is recycled
        lt.wait_until(lambda: pool.workers_alive == 1 and pool.worker_pids != first)
        assert lt.read(lambda: pool.recycled) == 1 and lt.read(lambda: pool.restarts) == 0
        if memfd is not None:  # the old worker's frames memfd is closed here too
            lt.wait_until(lambda: memfd not in _open_inodes())
        lt.run(decode(pool, clip_bytes))
        processes = lt.read(lambda: [w.process for w in pool._workers])

        async def stop_with_work() -> list[Any]:
            calls = [asyncio.ensure_future(decode(pool, clip_bytes)) for _ in range(3)]
            await asyncio.sleep(0)
            await pool.stop()
            return await asyncio.gather(*calls, return_exceptions=True)

        results = lt.run(stop_with_work())
        assert all(
            isinstance(r, RpcFailure) and r.code is grpc.StatusCode.UNAVAILABLE for r in results
        )
        assert processes and not any(p.is_alive() for p in processes)
        assert lt.read(lambda: (pool.worker_pids, pool.workers_alive)) == ((), 0)
        with pytest.raises(RpcFailure) as after:
            lt.run(decode(pool, clip_bytes))
        assert after.value.code is grpc.StatusCode.UNAVAILABLE
    finally:
        lt.run(pool.stop())
