"""The GPU decode stage and the hybrid router, with `nvdec_fake` standing in for PyNvVideoCodec
and torch on the CPU standing in for the GPU: the same code paths, device "cpu"."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from nvdec_fake import FakeNvc

from vidtag.decode import DecodeLimits, SamplingSpec, sample_frames
from vidtag.decode.nvdec_backend import NvdecDecoderPool, sample_nvdec_cuda
from vidtag.errors import BackendUnavailable, InvalidVideo, LimitExceeded
from vidtag.runtime.backends import RuntimeOptions
from vidtag.runtime.device import set_cuda_waits
from vidtag.runtime.preprocess import preprocess
from vidtag.runtime.tagger import Tagger
from vidtag.server import gpu_decode
from vidtag.server.batcher import BatcherConfig
from vidtag.server.config import ServeConfig
from vidtag.server.errors import RpcFailure, status_for
from vidtag.server.gpu_decode import EXAMPLES, HybridStage, NvdecStage, Route, example_clips
from vidtag.server.metrics import Metrics
from vidtag.server.pipeline import Decoded, ServedModel, thread_decode_stage
from vidtag.server.spool import UploadSpool
from vidtag.server.spool import supported as spool_supported

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tagger(model_repo: Path) -> Tagger:
    return Tagger(
        model_repo / "tiny" / "1", runtime=RuntimeOptions(runtime="torch", max_batch_size=4)
    )


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    ex = ThreadPoolExecutor(2)
    yield ex
    ex.shutdown(wait=True)


def _served(tagger: Tagger, executor: ThreadPoolExecutor) -> ServedModel:
    """A fresh ServedModel (its batcher binds to the event loop of the test that starts it)."""
    return ServedModel(tagger, BatcherConfig(max_batch_size=4), executor, Metrics())


def _fake_pool() -> tuple[FakeNvc, NvdecDecoderPool]:
    fake = FakeNvc()
    return fake, NvdecDecoderPool(module=fake, device="cpu")


def test_nvdec_stage_leaves_normalised_frames_on_the_device(
    tagger: Tagger, executor: ThreadPoolExecutor, clip_bytes: bytes
) -> None:
    _, pool = _fake_pool()
    stage = NvdecStage(pool, DecodeLimits(), workers=2, max_pending=4)
    model = _served(tagger, executor)
    start = time.monotonic()
    decoded = asyncio.run(stage(clip_bytes, model, None))
    clip, x, seconds = decoded.clip, decoded.x, decoded.seconds
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert tuple(x.shape) == (3, 8, 160, 96) and seconds > 0
    assert start <= decoded.began < decoded.received <= decoded.ready <= time.monotonic()
    assert decoded.received - decoded.began == pytest.approx(seconds)  # decoded in this process
    assert clip.frames.shape[0] == 0  # metadata only: no frames kept alive
    ref = tagger.decode(clip_bytes)  # PyAV on the CPU
    assert (clip.width, clip.height, clip.timestamps) == (ref.width, ref.height, ref.timestamps)
    # Normalised on the device exactly as the host normalises the same decode's uint8 frames
    # (the device keeps unrounded values: at most half a grey level apart).
    host = sample_nvdec_cuda(clip_bytes, tagger.spec, DecodeLimits(), pool=pool).to_host()
    want = preprocess(host.frames, tagger.meta.input)
    assert np.abs(x.numpy() - want).max() <= 0.5 / 255 / min(tagger.meta.input.std) + 1e-4
    assert stage.in_flight == 0
    stage.shutdown()


def test_router_fills_routes_in_proportion_to_capacity() -> None:
    release = asyncio.Event()
    seen: list[str] = []

    def blocking(name: str) -> Any:
        async def stage(video: bytes, model: Any, deadline: float | None) -> Decoded:
            seen.append(name)
            await release.wait()
            return Decoded(None, name, 0.0, 0.0, 0.0, 0.0)  # type: ignore[arg-type]

        return stage

    async def main() -> None:
        router = HybridStage(
            [Route("nvdec", blocking("nvdec"), 2), Route("cpu", blocking("cpu"), 1)]
        )
        jobs = [asyncio.create_task(router(b"", None, None)) for _ in range(6)]  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        # (in flight + 1) / capacity, ties to the first route: n n c n n c
        assert seen == ["nvdec", "nvdec", "cpu", "nvdec", "nvdec", "cpu"]
        assert [r.in_flight for r in router.routes] == [4, 2]
        release.set()
        assert [d.x for d in await asyncio.gather(*jobs)] == seen
        assert [r.in_flight for r in router.routes] == [0, 0]
        await router(b"", None, None)  # type: ignore[arg-type]
        assert router.counts() == {"nvdec": 5, "cpu": 2}  # idle: the first route

    asyncio.run(main())
    with pytest.raises(ValueError, match="capacity"):
        HybridStage([Route("cpu", blocking("cpu"), 0)])


def test_router_sends_each_request_where_it_finishes_first() -> None:
    """Once every route has decoded: the fastest route with a free decoder; with none free,
    the route where mean decode x load is least (the slower side takes the excess)."""
    release = asyncio.Event()
    seen: list[str] = []

    def timed(name: str, seconds: float) -> Any:
        async def stage(video: bytes, model: Any, deadline: float | None) -> Decoded:
            seen.append(name)
            await release.wait()
            return Decoded(None, name, seconds, 0.0, 0.0, 0.0)  # type: ignore[arg-type]

        return stage

    async def burst(router: HybridStage, n: int) -> None:
        """`n` requests at once, then all decoded."""
        release.clear()
        jobs = [asyncio.create_task(router(b"", None, None)) for _ in range(n)]  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*jobs)

    async def main() -> None:
        fast, slow = Route("nvdec", timed("nvdec", 0.025), 2), Route("cpu", timed("cpu", 0.05), 2)
        router = HybridStage([fast, slow])
        # Neither has decoded yet: the load decides (n c), and both are timed.
        await burst(router, 2)
        assert seen == ["nvdec", "cpu"] and (fast.decode_s, slow.decode_s) == (0.025, 0.05)
        seen.clear()
        await burst(router, 8)
        # Free decoders, fastest first (n n c c), then 25 ms x (n + 1) / 2 against
        # 50 ms x (m + 1) / 2 = 75 ms, ties to nvdec.
        assert seen == ["nvdec"] * 2 + ["cpu"] * 2 + ["nvdec"] * 4
        assert (fast.in_flight, slow.in_flight) == (0, 0)

    asyncio.run(main())


def test_router_simulation_runs() -> None:
    """benchmarks/hybrid_router.py, briefly: every rule routes every request."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "hybrid_router.py"), "--concurrency", "4",
         "--rates", "100", "--seconds", "0.3"],
        check=True, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(root / "src")},
    ).stdout  # fmt: skip
    rows = [line.split() for line in out.splitlines() if "req/s" in line]
    assert [r[1] for r in rows] == ["router", "load", "finish"] * 2
    assert all(float(r[2]) > 0 for r in rows)


def test_router_times_routes_by_their_recent_decodes() -> None:
    route = Route("cpu", None, 1)  # type: ignore[arg-type]
    route.observe(0.05)
    assert route.decode_s == 0.05
    for _ in range(40):
        route.observe(0.01)
    assert route.decode_s == pytest.approx(0.01, abs=1e-3)


def test_hybrid_requests_are_tagged_through_both_decoders_and_one_batcher(
    tagger: Tagger, executor: ThreadPoolExecutor, clip_bytes: bytes
) -> None:
    fake, pool = _fake_pool()
    nvdec = NvdecStage(pool, DecodeLimits(), workers=1, max_pending=8)
    cpu_threads = ThreadPoolExecutor(1)
    router = HybridStage(
        [Route("nvdec", nvdec, 1), Route("cpu", thread_decode_stage(cpu_threads, 1, 8), 1)]
    )
    model = _served(tagger, executor)

    async def one() -> tuple[Any, np.ndarray]:
        x = (await router(clip_bytes, model, None)).x
        scores, *_ = await model.batcher.submit(x)
        return x, scores

    async def main() -> list[tuple[Any, np.ndarray]]:
        await model.batcher.start()
        try:
            return await asyncio.gather(*(one() for _ in range(6)))
        finally:
            await model.batcher.stop()

    results = asyncio.run(main())
    counts = router.counts()
    assert counts["nvdec"] >= 2 and counts["cpu"] >= 2 and sum(counts.values()) == 6
    gpu = [s for x, s in results if isinstance(x, torch.Tensor)]
    cpu = [s for x, s in results if isinstance(x, np.ndarray)]
    assert len(gpu) == counts["nvdec"] and len(cpu) == counts["cpu"]
    assert len(fake.decoders) == 1  # one NVDEC thread, one session, reused
    # The same clip scores alike whichever decoder took it (NV12 vs swscale rounding apart;
    # measured 1e-4 against a 0.05 spread of this untrained model's scores).
    assert np.abs(np.mean(gpu, axis=0) - np.mean(cpu, axis=0)).max() < 0.003
    nvdec.shutdown()
    cpu_threads.shutdown()


@pytest.mark.parametrize(
    ("video", "limits", "error"),
    [
        (b"\x00not a video" * 100, DecodeLimits(), InvalidVideo),
        (None, DecodeLimits(max_bytes=1000), LimitExceeded),
    ],
    ids=["garbage", "too-big"],
)
def test_nvdec_stage_errors_are_the_cpu_paths(
    tagger: Tagger,
    executor: ThreadPoolExecutor,
    clip_bytes: bytes,
    video: bytes | None,
    limits: DecodeLimits,
    error: type[Exception],
) -> None:
    _, pool = _fake_pool()
    stage = NvdecStage(pool, limits, workers=1, max_pending=1)
    with pytest.raises(error) as exc_info:
        asyncio.run(stage(video or clip_bytes, _served(tagger, executor), None))
    assert status_for(exc_info.value)[0] is grpc.StatusCode.INVALID_ARGUMENT
    assert stage.in_flight == 0
    stage.shutdown()


def test_nvdec_shares_merge_into_the_whole_clip(tmp_path: Path) -> None:
    """NVDEC processes sharing a clip (SamplingSpec.share): merged, their frames are the
    whole decode's; a share with no GOP left returns no frame and is left out."""
    from dataclasses import replace

    from media import encode_clip

    from vidtag.decode.shares import merge_shares

    data = encode_clip(tmp_path / "gops.mp4", seconds=4.0, fps=12, gop=12).read_bytes()
    _, pool = _fake_pool()
    spec = SamplingSpec(frames=8, height=48, width=32)
    whole = sample_nvdec_cuda(data, spec, DecodeLimits(), pool=pool).to_host()
    parts = [
        sample_nvdec_cuda(data, replace(spec, share=(i, 6)), DecodeLimits(), pool=pool).to_host()
        for i in range(6)
    ]
    assert [len(p.frames) > 0 for p in parts] == [True] * 4 + [False] * 2  # 4 GOPs
    merged = merge_shares(parts)
    assert np.array_equal(merged.frames, whole.frames)
    assert merged.timestamps == whole.timestamps
    assert merged.frames_decoded == whole.frames_decoded


def test_nvdec_stage_sheds_beyond_its_queue(
    tagger: Tagger, executor: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()

    def slow(video: bytes, model: Any, pool: Any, limits: Any) -> Decoded:
        gate.wait(10)
        return Decoded(None, video, 0.0, 0.0, 0.0, 0.0)  # type: ignore[arg-type]

    monkeypatch.setattr(gpu_decode, "decode_on_device", slow)
    _, pool = _fake_pool()
    stage = NvdecStage(pool, DecodeLimits(), workers=1, max_pending=1)
    model = _served(tagger, executor)

    async def main() -> None:
        running = asyncio.create_task(stage(b"a", model, None))
        queued = asyncio.create_task(stage(b"b", model, None))
        await asyncio.sleep(0.05)
        assert (stage.in_flight, stage.pending) == (2, 1)
        with pytest.raises(RpcFailure) as exc_info:
            await stage(b"c", model, None)
        assert exc_info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.set()
        assert [r.x for r in await asyncio.gather(running, queued)] == [b"a", b"b"]
        await asyncio.sleep(0.01)  # the done-callbacks run on the loop
        assert stage.in_flight == 0

    asyncio.run(main())
    stage.shutdown()


def test_warm_up_opens_one_session_per_nvdec_thread(clip_bytes: bytes) -> None:
    fake, pool = _fake_pool()
    stage = NvdecStage(pool, DecodeLimits(), workers=3, max_pending=0)
    stage.warm(clip_bytes)
    assert len(fake.decoders) == pool.created == 3
    stage.shutdown()


def test_example_clips_are_intra_only_at_their_sizes() -> None:
    clips = example_clips(frames=10)
    assert len(clips) == len(EXAMPLES)  # this PyAV has both encoders
    spec = SamplingSpec(frames=8, height=32, width=32)  # the app asks for spec.frames + 2
    for clip, (width, height, encoder) in zip(clips, EXAMPLES, strict=True):
        got = sample_frames(clip, spec, DecodeLimits())
        assert (got.width, got.height) == (width, height)
        assert got.codec == ("hevc" if encoder == "libx265" else "h264")
        assert got.keyframes == 10 and got.frames_decoded == 8  # 8 distinct pictures


def test_warm_up_decodes_the_examples_in_every_thread(clip_bytes: bytes) -> None:
    """After the tiny clip, each thread decodes every example with the model's spec: its
    HEVC session is opened and its H.264 session reconfigured to the examples' sizes now; an
    example that does not decode is skipped."""
    fake, pool = _fake_pool()
    stage = NvdecStage(pool, DecodeLimits(), workers=2, max_pending=0)
    spec = SamplingSpec(frames=4, height=64, width=32)
    stage.warm(clip_bytes, (b"not a video", *example_clips(frames=4)), spec)
    assert sorted(d.codec for d in fake.decoders) == ["H264", "H264", "HEVC", "HEVC"]
    h264 = sum(1 for w, h, enc in EXAMPLES if enc == "libx264")
    assert pool.reconfigured == 2 * h264  # per thread: the tiny clip, then each H.264 size
    stage.shutdown()


# `vidtag serve --device cuda --decode-backend nvdec` in a child process, with nvdec_fake as
# PyNvVideoCodec and the device check passed: argv[1] is tests/, argv[2] how the warm-up fails.
_SERVE_WITH_FAKE_NVDEC = """
import functools, sys
sys.path.insert(0, sys.argv.pop(1))
from nvdec_fake import FakeNvc
import vidtag.decode.nvdec_backend as nvdec_backend
import vidtag.runtime.device as device
device.require_device = lambda name: None  # as if torch saw a GPU
if sys.argv.pop(1) == "decoder":
    # NVDEC threads on the CPU (the fake), whose decoder fails on every packet.
    class BrokenNvc(FakeNvc):
        def CreateDecoder(self, **kwargs):
            decoder = super().CreateDecoder(**kwargs)
            def broken(packet):
                raise RuntimeError("CUVID_ERROR_LAUNCH_FAILED\\n  decoder lost")
            decoder.Decode = broken
            return decoder
    sys.modules["PyNvVideoCodec"] = BrokenNvc()
    nvdec_backend.NvdecDecoderPool = functools.partial(
        nvdec_backend.NvdecDecoderPool, device="cpu"
    )
else:
    # PyNvVideoCodec imports, but torch sees no CUDA device to decode into.
    sys.modules["PyNvVideoCodec"] = FakeNvc()
from vidtag.cli import main
sys.exit(main(["serve", *sys.argv[1:]]))
"""


@pytest.mark.parametrize(
    ("processes", "fail", "error"),
    [
        (False, "device", "BackendUnavailable"),
        (False, "decoder", "InvalidVideo"),
        # Worker processes import the real PyNvVideoCodec (absent here), not the fake.
        (True, "device", "BackendUnavailable: decode backend 'nvdec' needs the PyNvVideoCodec"),
    ],
)
def test_a_failed_nvdec_warm_up_ends_serve_in_one_line(
    processes: bool, fail: str, error: str
) -> None:
    """`vidtag serve` whose NVDEC warm-up raises, in threads or in a decode worker, exits 2
    with one error line naming the cause, as `--device cuda` without CUDA does: no
    traceback."""
    import re
    import subprocess
    import sys

    from vidtag.runtime.device import nvdec_available

    if processes and nvdec_available():
        pytest.skip("this machine has PyNvVideoCodec: its workers would not fail")
    tests = Path(__file__).resolve().parent
    src = str(tests.parent / "src")
    argv = ["--device", "cuda", "--decode-backend", "nvdec", "--nvdec-workers", "2"]
    argv += ["--decode-processes", str(processes)]
    argv += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"]
    r = subprocess.run(
        [sys.executable, "-c", _SERVE_WITH_FAKE_NVDEC, str(tests), fail, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    # Only log lines (the server's INFO lines on its way down, and the error).
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ", x) for x in lines), out
    (line,) = [x for x in lines if " ERROR " in x]
    assert "cannot serve: NVDEC warm-up on cuda failed (" in line and error in line, line
    assert "--decode-backend pyav" in line
    if fail == "decoder":  # the decoder's own message, on the same line
        assert "CUVID_ERROR_LAUNCH_FAILED decoder lost" in line


def test_the_server_imports_without_torch() -> None:
    """The CPU image has no torch: the server, its config and the GPU settings import and
    validate without it (torch loads only when the torch runtime or NVDEC is built)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import vidtag.server.app, vidtag.server.cli\n"
        "from vidtag.server.config import ServeConfig\n"
        "ServeConfig(device='cuda', decode_backend='hybrid').runtime_options()\n"
        "assert 'torch' not in sys.modules and 'PyNvVideoCodec' not in sys.modules\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": src}, timeout=60)


class _Driver:
    """libcuda's three calls `set_cuda_waits` makes, recorded; `fail` names one that errs."""

    def __init__(self, fail: str = "") -> None:
        self.fail = fail
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., int]:
        if not name.startswith("cu"):
            raise AttributeError(name)

        def call(*args: object) -> int:
            self.calls.append((name, args))
            return 100 if name == self.fail else 0

        return call


@pytest.mark.parametrize(("mode", "flags"), [("block", 4), ("spin", 1), ("auto", 0)])
def test_cuda_waits_set_the_primary_context_flags(mode: str, flags: int) -> None:
    driver = _Driver()
    set_cuda_waits(1, mode, driver=driver)
    names = [name for name, _ in driver.calls]
    assert names == ["cuInit", "cuDeviceGet", "cuDevicePrimaryCtxSetFlags_v2"]
    assert driver.calls[1][1][1] == 1 and driver.calls[2][1][1] == flags


def test_cuda_waits_refusals_are_errors() -> None:
    with pytest.raises(BackendUnavailable, match="cuDeviceGet failed with CUDA error 100"):
        set_cuda_waits(0, "block", driver=_Driver(fail="cuDeviceGet"))
    with pytest.raises(ValueError, match="CUDA wait mode"):
        set_cuda_waits(0, "nap", driver=_Driver())
    with pytest.raises(ValueError, match="nvdec_waits must be one of"):
        ServeConfig(nvdec_waits="nap")


@pytest.mark.parametrize(
    ("waits", "calls"),
    [("block", [(3, "block")]), ("auto", []), ("spin", [(3, "spin")])],  # spin: refused
)
def test_an_nvdec_worker_sets_its_waits_then_decodes_a_spooled_upload(
    monkeypatch: pytest.MonkeyPatch,
    clip_bytes: bytes,
    waits: str,
    calls: list[tuple[object, ...]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A decode pool's NVDEC worker (run here in a thread, NVDEC faked on the CPU) sets how its
    CUDA context waits before it warms up (a refusal is a warning, not a failed start),
    reports that it maps the server's segments, and decodes an upload handed as a segment."""
    if not spool_supported():
        pytest.skip("memfd_create and /proc (Linux)")
    from vidtag.decode import nvdec_backend
    from vidtag.server import decode_pool

    monkeypatch.setattr(nvdec_backend, "_POOL", NvdecDecoderPool(module=FakeNvc(), device="cpu"))
    seen: list[tuple[object, ...]] = []

    def record(*args: object) -> None:
        seen.append(args)
        if args[1] == "spin":
            raise BackendUnavailable("cuDevicePrimaryCtxSetFlags failed with CUDA error 1")

    monkeypatch.setattr(decode_pool, "set_cuda_waits", record)
    warm = decode_pool._warm_up
    monkeypatch.setattr(decode_pool, "_warm_up", lambda b: (seen.append(("warm",)), warm(b)))
    monkeypatch.setattr(decode_pool.signal, "signal", lambda *a: None)  # not the main thread
    spool = UploadSpool(16 << 20)
    seg = spool.put(clip_bytes)
    assert seg is not None
    seg.fill()
    task_r, task_w = multiprocessing.Pipe(duplex=False)
    result_r, result_w = multiprocessing.Pipe(duplex=False)
    config = decode_pool.DecodePoolConfig(backend="nvdec", gpu_id=3, cuda_waits=waits)
    args = (task_r, result_w, None, config, (), None, spool.probe(decode_pool.PROBE))
    worker = threading.Thread(target=decode_pool._worker_main, args=args, daemon=True)
    worker.start()
    frames_fd = None
    try:
        assert result_r.poll(60)
        kind, pid, maps_spool, frames_fd = result_r.recv()
        assert (kind, pid, maps_spool) == ("ready", os.getpid(), True)
        assert seen == [*calls, ("warm",)]
        refused = "keeps CUDA's own waits: cuDevicePrimaryCtxSetFlags failed"
        assert (refused in capfd.readouterr().err) == (waits == "spin")
        spec = SamplingSpec(frames=4, height=64, width=32)
        task_w.send((7, spec, DecodeLimits(), seg.ref(), False))  # frames through the pipe
        task_w.send_bytes(b"")
        assert result_r.poll(60)
        before = time.monotonic()
        kind, task_id, clip, layout, began = result_r.recv()
        assert (kind, task_id, layout) == ("ok", 7, None) and began < before
        want = sample_frames(clip_bytes, spec, backend="nvdec")
        assert np.array_equal(clip.frames, want.frames) and clip.timestamps == want.timestamps
        if frames_fd is not None:  # the same through the worker's frames memfd
            task_w.send((8, spec, DecodeLimits(), seg.ref(), True))
            task_w.send_bytes(b"")
            assert result_r.poll(60)
            kind, task_id, clip, layout, _ = result_r.recv()
            assert (kind, task_id, clip.frames.size) == ("ok", 8, 0) and layout is not None
            with open(f"/proc/self/fd/{frames_fd}", "rb") as f:
                frames = decode_pool._read_frames(f.fileno(), layout)
            assert np.array_equal(frames, want.frames)
    finally:
        task_w.send(None)
        worker.join(30)
        spool.close()
        if frames_fd is not None:
            os.close(frames_fd)
