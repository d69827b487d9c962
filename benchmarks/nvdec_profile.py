"""NVDEC profile (issue 6): where one clip's NVDEC decode spends its time, and how it scales.

Run on a CUDA machine with PyNvVideoCodec (scripts/nvdec_profile.sh brings the packages); no
gRPC, no server. Sections, each timed and kept in one JSON (rewritten after every section):

- parity: the `nvdec` and `pyav` backends on the same plan (the default model's sampling) for
  clips of several sizes and codecs: timestamps, pixel differences, and the default model's
  scores on both inputs (torch runtime on the GPU);
- stages: one thread, 30 s 540x960 H.264 clips with a 4 s GOP: total, CPU preparation (open,
  index, plan, access units), time inside NVDEC's `Decode` calls and the rest, for each pool
  variant (flush after every GOP or once per clip; NATIVE, LOW or ZERO display latency), and
  whether a variant's frames equal the first variant's;
- threads: clips/s and per-clip p50 with N threads sharing one process (one session each);
- processes: clips/s with N processes of one thread each, and the CPU time they spent per clip,
  for each way of waiting for the GPU in `--waits` (`vidtag.runtime.device.set_cuda_waits`:
  CUDA's default "auto" spins a core through every wait).

    python benchmarks/nvdec_profile.py --out build/gpu-bench/nvdec-profile.json
    python benchmarks/nvdec_profile.py --fake   # CPU smoke run: tests/nvdec_fake.py, no GPU
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # decode.py
sys.path.insert(0, str(ROOT / "tests"))  # nvdec_fake (--fake)

from decode import ClipConfig, encode_clip  # noqa: E402

from vidtag.decode.limits import DecodeLimits  # noqa: E402
from vidtag.decode.spec import SamplingSpec  # noqa: E402

CACHE = ROOT / "build" / "gpu-bench" / "profile-clips"
BAR = [ClipConfig(540, 960, "h264", "4s", 30)]
PARITY = [
    ClipConfig(540, 962, "h264", "4s", 15),
    ClipConfig(540, 960, "h264", "1s", 15),
    ClipConfig(720, 1280, "hevc", "4s", 15),
    ClipConfig(1080, 1920, "h264", "4s", 15),
]
VARIANTS = [  # (flush_every_gop, latency)
    (True, "NATIVE"),
    (False, "NATIVE"),
    (True, "LOW"),
    (False, "LOW"),
    (False, "ZERO"),
]


def _encode_job(cfg: ClipConfig, seed: int, path: str) -> None:
    encode_clip(cfg, Path(path), seed=seed, max_threads=4)


def build_clips(fake: bool) -> dict[str, list[Path]]:
    """4 distinct bar clips and the parity clips, encoded in parallel and cached."""
    bar, parity = (
        ([ClipConfig(270, 480, "h264", "4s", 4)], [ClipConfig(136, 240, "hevc", "1s", 3)])
        if fake
        else (BAR, PARITY)
    )
    jobs = [(c, 11 + i, CACHE / f"seed{11 + i}-{c.name}") for c in bar for i in range(4)]
    jobs += [(c, 7, CACHE / f"seed7-{c.name}") for c in parity]
    CACHE.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if not j[2].is_file()]
    if todo:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(min(len(todo), os.cpu_count() or 1), mp_context=ctx) as ex:
            list(ex.map(_encode_job, *zip(*[(c, s, str(p)) for c, s, p in todo], strict=True)))
    return {"bar": [p for _, _, p in jobs[:4]], "parity": [p for _, _, p in jobs[4:]]}


def make_pool(fake: bool, **kw: Any) -> Any:
    from vidtag.decode.nvdec_backend import NvdecDecoderPool

    if fake:
        from nvdec_fake import FakeNvc

        return NvdecDecoderPool(module=FakeNvc(), device="cpu", **kw)
    return NvdecDecoderPool(**kw)


def default_spec() -> tuple[SamplingSpec, Path]:
    from vidtag.runtime.artifact import load_meta
    from vidtag.runtime.repository import default_repository, resolve_model

    path = resolve_model(default_repository())
    return load_meta(path).sampling_spec(), path


def _sync(fake: bool) -> None:
    if not fake:
        import torch

        torch.cuda.synchronize()


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)) * 1e3, 2) if xs else float("nan")


# ---------------------------------------------------------------------------------------------


def parity(clips: list[Path], fake: bool) -> list[dict[str, Any]]:
    from vidtag.decode.nvdec_backend import sample_nvdec_cuda
    from vidtag.decode.pyav_backend import sample_pyav
    from vidtag.runtime.backends import RuntimeOptions
    from vidtag.runtime.preprocess import preprocess
    from vidtag.runtime.tagger import Tagger

    spec, model = default_spec()
    limits = DecodeLimits()
    device = "cpu" if fake else "cuda"
    tagger = Tagger(model, runtime=RuntimeOptions("torch", device, max_batch_size=1))
    pool = make_pool(fake)
    rows = []
    for path in clips:
        data = path.read_bytes()
        ref = sample_pyav(data, spec, limits)
        got = sample_nvdec_cuda(data, spec, limits, pool=pool).to_host()
        diff = np.abs(got.frames.astype(np.int16) - ref.frames.astype(np.int16))
        scores = [
            tagger.infer(preprocess(c.frames, tagger.meta.input)[None])[0][0] for c in (ref, got)
        ]
        top = [set(np.argsort(-s)[:5].tolist()) for s in scores]
        rows.append(
            {
                "clip": path.name,
                "same_timestamps": got.timestamps == ref.timestamps,
                "frames_decoded": [ref.frames_decoded, got.frames_decoded],
                "pixel_mean_abs": round(float(diff.mean()), 3),
                "pixel_p99_abs": float(np.percentile(diff, 99)),
                "pixel_max_abs": int(diff.max()),
                "score_max_abs": round(float(np.abs(scores[0] - scores[1]).max()), 4),
                "top5_same": top[0] == top[1],
            }
        )
        print("  parity", rows[-1], flush=True)
    return rows


class _TimedNvc:
    """PyNvVideoCodec (or the fake) with every decoder's `Decode` timed."""

    def __init__(self, nvc: Any) -> None:
        self._nvc = nvc
        self.decode_s = 0.0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nvc, name)

    def CreateDecoder(self, **kw: Any) -> Any:
        dec = self._nvc.CreateDecoder(**kw)
        outer = self

        class Timed:
            def __getattr__(self, name: str) -> Any:
                return getattr(dec, name)

            def Decode(self, pkt: Any) -> Any:
                t = time.perf_counter()
                try:
                    return dec.Decode(pkt)
                finally:
                    outer.decode_s += time.perf_counter() - t
                    outer.calls += 1

        return Timed()


def stages(clips: list[Path], fake: bool, reps: int) -> list[dict[str, Any]]:
    from vidtag.decode import nvdec_backend as nv

    spec, _ = default_spec()
    limits = DecodeLimits()
    data = [p.read_bytes() for p in clips]
    first: list[np.ndarray] | None = None
    rows = []
    for each, latency in VARIANTS:
        timed = _TimedNvc(make_pool(fake).nvc())
        pool = make_pool(fake, flush_every_gop=each, latency=latency)
        pool.module = timed
        in_pool: list[float] = []
        orig = pool.decode

        def measured(
            *a: Any, _orig: Callable[..., Any] = orig, _in: list[float] = in_pool, **k: Any
        ) -> Any:
            t = time.perf_counter()
            try:
                return _orig(*a, **k)
            finally:
                _in.append(time.perf_counter() - t)

        pool.decode = measured
        try:
            for d in data[:2]:
                nv.sample_nvdec_cuda(d, spec, limits, pool=pool)
            _sync(fake)
            in_pool.clear()
            timed.decode_s, timed.calls = 0.0, 0
            totals, frames, out = [], [], []
            for r in range(reps):
                t = time.perf_counter()
                clip = nv.sample_nvdec_cuda(data[r % len(data)], spec, limits, pool=pool)
                _sync(fake)
                totals.append(time.perf_counter() - t)
                frames.append(clip.frames_decoded)
                if r < len(data):
                    out.append(clip.frames.cpu().numpy())
        except Exception as exc:  # a variant NVDEC refuses is a result too
            rows.append({"flush_every_gop": each, "latency": latency, "error": repr(exc)})
            print("  stages", rows[-1], flush=True)
            continue
        same = None
        if first is None:
            first = out
        else:
            same = max(
                int(np.abs(a.astype(np.int16) - b).max()) for a, b in zip(first, out, strict=True)
            )
        rows.append(
            {
                "flush_every_gop": each,
                "latency": latency,
                "total_p50_ms": _pct(totals, 50),
                "total_p90_ms": _pct(totals, 90),
                "pool_decode_p50_ms": _pct(in_pool, 50),
                "prep_and_stack_p50_ms": round(
                    float(np.median(np.array(totals) - np.array(in_pool))) * 1e3, 2
                ),
                "in_Decode_ms_per_clip": round(timed.decode_s / reps * 1e3, 2),
                "Decode_calls_per_clip": round(timed.calls / reps, 1),
                "frames_out_per_clip": float(np.mean(frames)),
                "max_abs_vs_first_variant": same,
            }
        )
        print("  stages", rows[-1], flush=True)
    return rows


def _loop(
    pool: Any, data: list[bytes], spec: SamplingSpec, until: float, fake: bool
) -> list[float]:
    from vidtag.decode.nvdec_backend import sample_nvdec_cuda

    lat = []
    i = 0
    limits = DecodeLimits()
    while time.perf_counter() < until:
        t = time.perf_counter()
        sample_nvdec_cuda(data[i % len(data)], spec, limits, pool=pool)
        _sync(fake)
        lat.append(time.perf_counter() - t)
        i += 1
    return lat


def _thread(
    k: int,
    pool: Any,
    data: list[bytes],
    spec: SamplingSpec,
    fake: bool,
    barrier: threading.Barrier,
    results: list[list[float]],
    t_end: list[float],
) -> None:
    _loop(pool, data[:1], spec, time.perf_counter() + 0.01, fake)  # this thread's session
    barrier.wait()  # every thread is ready
    barrier.wait()  # t_end is set
    results[k] = _loop(pool, data, spec, t_end[0], fake)


def threads(
    clips: list[Path], fake: bool, counts: list[int], seconds: float, **kw: Any
) -> list[dict[str, Any]]:
    spec, _ = default_spec()
    data = [p.read_bytes() for p in clips]
    rows = []
    for n in counts:
        pool = make_pool(fake, **kw)
        barrier = threading.Barrier(n + 1)
        results: list[list[float]] = [[] for _ in range(n)]
        t_end = [0.0]

        ths = [
            threading.Thread(
                target=_thread, args=(k, pool, data, spec, fake, barrier, results, t_end)
            )
            for k in range(n)
        ]
        for th in ths:
            th.start()
        barrier.wait()
        t0 = time.perf_counter()
        t_end[0] = t0 + seconds
        barrier.wait()
        for th in ths:
            th.join()
        wall = time.perf_counter() - t0
        lat = [x for r in results for x in r]
        rows.append(
            {
                "threads": n,
                **kw,
                "clips": len(lat),
                "clips_per_s": round(len(lat) / wall, 1),
                "p50_ms": _pct(lat, 50),
                "p99_ms": _pct(lat, 99),
            }
        )
        print("  threads", rows[-1], flush=True)
    return rows


def _proc(
    paths: list[str],
    fake: bool,
    ready: Any,
    go: Any,
    seconds: float,
    out: Any,
    waits: str,
    kw: dict[str, Any],
) -> None:
    try:
        if not fake and waits != "auto":
            from vidtag.runtime.device import set_cuda_waits

            set_cuda_waits(0, waits)  # before this process's CUDA context exists
        spec, _ = default_spec()
        data = [Path(p).read_bytes() for p in paths]
        pool = make_pool(fake, **kw)
        _loop(pool, data[:1], spec, time.perf_counter() + 0.01, fake)
        ready.put(1)
        go.wait()
        cpu = time.process_time()
        lat = _loop(pool, data, spec, time.perf_counter() + seconds, fake)
        out.put((lat, time.process_time() - cpu))
    except BaseException as exc:  # reported, not raised: the parent counts what came back
        ready.put(0)
        out.put(repr(exc))


def processes(
    clips: list[Path],
    fake: bool,
    counts: list[int],
    seconds: float,
    waits: list[str] = ["auto"],  # noqa: B006 (read only)
    **kw: Any,
) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for n, wait in [(n, w) for n in counts for w in waits]:
        ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        args = ([str(p) for p in clips], fake, ready, go, seconds, out, wait, kw)
        procs = [ctx.Process(target=_proc, args=args) for _ in range(n)]
        t_start = time.perf_counter()
        for p in procs:
            p.start()
        ok = sum(ready.get(timeout=60) for _ in procs)
        startup = time.perf_counter() - t_start
        t0 = time.perf_counter()
        go.set()
        got = [out.get(timeout=seconds + 120) for _ in procs]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(30)
        errors = [g for g in got if isinstance(g, str)]
        lat = [x for g in got if not isinstance(g, str) for x in g[0]]
        cpu = sum(g[1] for g in got if not isinstance(g, str))
        rows.append(
            {
                "processes": n,
                "waits": wait,
                **kw,
                "ready": ok,
                "startup_s": round(startup, 1),
                "clips": len(lat),
                "clips_per_s": round(len(lat) / wall, 1),
                "p50_ms": _pct(lat, 50),
                "p99_ms": _pct(lat, 99),
                "cpu_ms_per_clip": round(1000 * cpu / max(len(lat), 1), 2),
                "errors": errors[:2],
            }
        )
        print("  processes", rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fake", action="store_true", help="CPU smoke run with tests/nvdec_fake.py")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "gpu-bench" / "nvdec-profile.json")
    p.add_argument("--reps", type=int, default=20, help="clips per stage variant")
    p.add_argument("--seconds", type=float, default=3.0, help="per scaling step")
    p.add_argument("--threads", default="1,2,4,8,16")
    p.add_argument("--processes", default="2,4,8")
    p.add_argument(
        "--waits", default="auto", help="how processes wait for the GPU: auto,block,spin,yield"
    )
    p.add_argument("--skip", default="", help="sections to skip, comma-separated")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, Any] = {"tool": "benchmarks/nvdec_profile.py", "fake": args.fake}
    t0 = time.perf_counter()
    clips = build_clips(args.fake)
    report["encode_s"] = round(time.perf_counter() - t0, 1)
    print(f"clips ready in {report['encode_s']} s", flush=True)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    best_kw: dict[str, Any] = {}
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("parity", lambda: parity(clips["bar"][:1] + clips["parity"], args.fake)),
        ("stages", lambda: stages(clips["bar"], args.fake, args.reps)),
        ("threads", lambda: threads(clips["bar"], args.fake, ints(args.threads), args.seconds)),
        (
            "processes",
            lambda: processes(
                clips["bar"], args.fake, ints(args.processes), args.seconds, args.waits.split(",")
            ),
        ),
        (
            "threads_best",
            lambda: threads(clips["bar"], args.fake, ints(args.threads), args.seconds, **best_kw),
        ),
    ]
    status = 0
    for name, run in sections:
        if name in skip or (name == "threads_best" and not best_kw):
            continue
        t = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            report[name] = run()
        except Exception as exc:
            import traceback

            traceback.print_exc()
            report[name] = {"error": repr(exc)}
            status = 1
        report[f"{name}_s"] = round(time.perf_counter() - t, 1)
        if name == "stages" and isinstance(report[name], list):
            ok = [
                r
                for r in report[name]
                if "total_p50_ms" in r and r["max_abs_vs_first_variant"] in (None, 0)
            ]
            if ok:
                fastest = min(ok, key=lambda r: r["total_p50_ms"])
                if (fastest["flush_every_gop"], fastest["latency"]) != VARIANTS[0]:
                    best_kw = {
                        "flush_every_gop": fastest["flush_every_gop"],
                        "latency": fastest["latency"],
                    }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wall {time.perf_counter() - t0:.0f} s; report {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
