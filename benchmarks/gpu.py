"""GPU benchmark (issue 6): latency, throughput and memory of `vidtag serve --device cuda`.

One command, budgeted to --minutes (default 8) on one H100 machine with 16 cores, clip
generation included. It makes its own clips (decode.py's Renderer: textured, noisy content at
about the bitrate of real phone clips; cached in build/gpu-bench/clips) and its own R(2+1)D-18
artifact (random weights, exported through vidtag's export code into a model repository cached
in build/gpu-bench). For each configuration (model x decoder x runtime) a fresh server is started
as a subprocess (like soak.py) and driven with `vidtag bench`'s load generator:

1. memory (one configuration per model, the first decoder available): closed loop over clips
   of mixed sizes, frame rates and codecs; GPU memory of the server's processes (nvidia-smi)
   after the first 100 clips and every chunk up to 10 000, growth in %;
2. latency: concurrency 1 on 30 s 540x960 H.264 clips with a 4 s GOP: p50/p90/p99 and the
   server's stage split (decode, inference, rest), in both input modes of `vidtag bench`:
   `bytes` (each request uploads the ~3.7 MB clip: end to end, what a backend uploading clips
   sees; loopback gRPC alone costs ~15-20 ms of it in Python) and `path` (each request names
   the clip's file, which the server, started with --allow-path-root on the clip cache, reads
   itself: no upload). Both rows are printed and kept in the JSON (steps "1" and "1:path"), and
   the p50 bar is judged on each, separately;
3. throughput: closed loop at concurrency 8, 64 and 256 (clients split over --client-procs
   processes, so one Python client does not cap the rate): clips/s, p50, p99; bytes input
   (end to end; the bar), and with `--throughput-inputs bytes,path` path input too (steps
   "8:path", ...: what the server does without the upload). The memory phase uploads.

Models: the bundled default (models/stb1/<newest>) and R(2+1)D-18 at 8x112x112. Decoders:
`nvdec`, `pyav` (CPU) and `hybrid` (last, while the budget lasts); one the server or machine
lacks is skipped with the reason. Prints a table, the issue's bars with PASS/FAIL, and writes
one JSON file (--out; rewritten after every configuration, so a killed run keeps its results).
Exit 0 when every bar passes (dry run: when every configuration ran without errors), 1 when
one fails, 2 when nothing could run.

`--dry-run` takes the same path on a CPU-only machine in about 2 minutes: CPU device, onnx and
torch runtimes (when the server has --runtime), 3 s 270x480 clips, 2 s phases, concurrency
1/2/4, 200 clips for memory (process RSS where there is no GPU), R(2+1)D-18 at 4x56x56.

    python benchmarks/gpu.py                      # one H100 (scripts/gpu_check.sh)
    python benchmarks/gpu.py --dry-run            # CPU smoke run of the harness
    python benchmarks/gpu.py --only r2plus1d_18,nvdec --skip memory --step-s 5
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # decode.py, soak.py beside this file

from decode import ClipConfig, encode_clip
from soak import _free_port, process_tree, serve, tree_rss_mb

from vidtag.client.bench import CallOptions, Clip, InputMode, Plan, Step, run_plan
from vidtag.server.decode_pool import WORKER_NAME

ROOT: Final = Path(__file__).resolve().parents[1]
CACHE: Final = ROOT / "build" / "gpu-bench"
# The bars.
P50_BAR_MS: Final = 20.0
THROUGHPUT_BAR: Final = 600.0
P99_BAR_MS: Final = 150.0
MEMORY_BAR: Final = 0.02
DECODERS: Final = ("nvdec", "pyav", "hybrid")
OPTIONAL_DECODERS: Final = frozenset({"hybrid"})  # run after the others, while budget remains
RUNTIMES: Final = ("onnx", "torch", "auto")
PHASES: Final = ("memory", "latency", "throughput")
# The latency phase's steps (concurrency 1) by input mode: the key under a configuration's
# "steps" (throughput steps are keyed by their concurrency alone for bytes input, "c:path" else).
LATENCY_STEPS: Final[dict[InputMode, str]] = {"bytes": "1", "path": "1:path"}
R2P1D: Final = "r2plus1d_18"
MiB: Final = 1024 * 1024


# ---------------------------------------------------------------- clips


@dataclass(frozen=True)
class RateClip(ClipConfig):
    """decode.py's ClipConfig at any frame rate (it fixes 30 fps), GOP in seconds, own seed."""

    fps: int = 30
    seed: int = 7

    @property
    def n_frames(self) -> int:
        return self.duration * self.fps

    def keyint(self) -> int:
        return int(self.gop.removesuffix("s")) * self.fps

    @property
    def name(self) -> str:
        return (
            f"{self.width}x{self.height}-{self.codec}-{self.fps}fps-gop{self.gop}-"
            f"{self.duration}s-seed{self.seed}.{self.container}"
        )


def encode(cfg: RateClip, path: Path) -> None:
    """decode.encode_clip at `cfg.fps` with `cfg.seed` (periodic GOPs only: no cut keyframes
    to force), at most 8 encoder threads."""
    encode_clip(cfg, path, fps=cfg.fps, seed=cfg.seed, max_threads=8)


def bar_clips(size: tuple[int, int], seconds: int, count: int) -> list[RateClip]:
    """The latency/throughput clips: H.264, 30 fps, a keyframe every 4 s, distinct content."""
    w, h = size
    return [RateClip(w, h, "h264", "4s", seconds, fps=30, seed=11 + i) for i in range(count)]


def mixed_clips(dry: bool) -> list[RateClip]:
    """The memory phase's clips: portrait and landscape sizes, 24-60 fps, H.264 and HEVC."""
    if dry:
        return [
            RateClip(270, 480, "h264", "4s", 3, fps=30, seed=21),
            RateClip(360, 640, "hevc", "1s", 3, fps=25, seed=22),
            RateClip(240, 426, "h264", "4s", 3, fps=24, seed=23),
            RateClip(320, 180, "hevc", "4s", 2, fps=60, seed=24),
        ]
    return [
        RateClip(540, 960, "h264", "4s", 15, fps=30, seed=31),
        RateClip(720, 1280, "h264", "1s", 15, fps=25, seed=32),
        RateClip(1080, 1920, "h264", "4s", 15, fps=30, seed=33),
        RateClip(480, 854, "h264", "8s", 15, fps=24, seed=34),
        RateClip(1280, 720, "h264", "4s", 15, fps=30, seed=35),
        RateClip(540, 962, "h264", "4s", 15, fps=30, seed=36),
        RateClip(540, 960, "hevc", "4s", 15, fps=30, seed=37),
        RateClip(720, 1280, "hevc", "4s", 15, fps=24, seed=38),
        RateClip(1080, 1920, "hevc", "4s", 8, fps=60, seed=39),
        RateClip(1280, 720, "hevc", "1s", 8, fps=60, seed=40),
    ]


def _encode_job(cfg: RateClip, path: str) -> None:
    encode(cfg, Path(path))


def build_clips(configs: Sequence[RateClip], folder: Path) -> tuple[list[Path], float]:
    """Encode the clips not yet in `folder` in parallel processes; (paths, seconds spent)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / c.name for c in configs]
    todo = [(c, p) for c, p in zip(configs, paths, strict=True) if not p.is_file()]
    todo.sort(key=lambda cp: -cp[0].width * cp[0].height * cp[0].n_frames)  # longest first
    t0 = time.perf_counter()
    if todo:
        workers = max(1, min(len(todo), os.cpu_count() or 1))
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            list(pool.map(_encode_job, [c for c, _ in todo], [str(p) for _, p in todo]))
    return paths, time.perf_counter() - t0


def read_clips(paths: Sequence[Path]) -> list[Clip]:
    """The clips' bytes, each with its absolute path (for `path` input)."""
    return [Clip(p.name, p.read_bytes(), p.absolute()) for p in paths]


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class Model:
    key: str  # "default" | "r2plus1d_18"
    label: str  # e.g. "stb1/2", "r2plus1d_18 8x112x112"
    repository: Path
    name: str
    version: str
    input: str  # FxHxW


def default_model(repository: Path, cache: Path) -> Model:
    """The bundled default (the repository's default model at its newest version), copied
    alone into a repository under `cache`: the server loads every version it finds, and
    warming the older ones up would only slow its start and share the GPU's memory."""
    from vidtag.runtime.artifact import load_meta
    from vidtag.runtime.repository import resolve_model

    path = resolve_model(repository)
    spec = load_meta(path).input
    repo = cache / "models-default"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(path, repo / path.parent.name / path.name)
    return Model(
        "default",
        f"{path.parent.name}/{path.name}",
        repo,
        path.parent.name,
        path.name,
        f"{spec.frames}x{spec.height}x{spec.width}",
    )


def r2plus1d_model(cache: Path, frames: int, size: int) -> tuple[Model, float]:
    """R(2+1)D-18 with random weights at frames x size x size, exported by vidtag's export code
    (ONNX + parity check) into a repository of its own under `cache`, reused while export.py is
    unchanged; (model, seconds spent exporting, 0 when cached)."""
    import vidtag.train.export as export

    digest = hashlib.sha1(Path(export.__file__).read_bytes()).hexdigest()[:8]
    repo = cache / f"models-{R2P1D}-{frames}x{size}x{size}-{digest}"
    model = Model(
        R2P1D, f"{R2P1D} {frames}x{size}x{size}", repo, R2P1D, "1", f"{frames}x{size}x{size}"
    )
    if (repo / R2P1D / "1" / "model.json").is_file():
        return model, 0.0
    import torch

    from vidtag.nets import create_model
    from vidtag.runtime.artifact import InputSpec
    from vidtag.tags import TAGS
    from vidtag.train.trainer import MEAN, STD

    t0 = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = create_model(R2P1D, num_classes=len(TAGS))
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        staged = Path(tmp) / "repo"
        export.export_artifact(
            staged,
            name=R2P1D,
            version="1",
            model=net,
            arch=R2P1D,
            input_spec=InputSpec(frames, size, size, MEAN, STD),
        )
        shutil.rmtree(repo, ignore_errors=True)
        shutil.move(str(staged), str(repo))
    return model, time.perf_counter() - t0


# ---------------------------------------------------------------- what the machine and server offer


def serve_help() -> str:
    """`vidtag serve --help` of the code under test (flags this benchmark may pass)."""
    cmd = [sys.executable, "-m", "vidtag.cli", "serve", "--help"]
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def has_flag(help_text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def decoder_availability(device: str, help_text: str) -> dict[str, str | None]:
    """Decoder -> None when usable here, else why not."""
    out: dict[str, str | None] = {"pyav": None}
    gpu_reason = None
    if device == "cpu":
        gpu_reason = "CPU device (no GPU)"
    elif not has_flag(help_text, "--decode-backend"):
        gpu_reason = "vidtag serve has no --decode-backend flag"
    elif importlib.util.find_spec("PyNvVideoCodec") is None:
        gpu_reason = "PyNvVideoCodec is not installed"
    out["nvdec"] = gpu_reason
    if gpu_reason is None and "hybrid" not in help_text:
        out["hybrid"] = "vidtag serve does not offer decode backend 'hybrid'"
    else:
        out["hybrid"] = gpu_reason
    return out


def gpu_info() -> dict[str, Any] | None:
    """Name, driver and total memory of GPU 0 from nvidia-smi; None without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    q = "name,driver_version,memory.total"
    r = subprocess.run(
        [smi, f"--query-gpu={q}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0 or not r.stdout.strip():
        return None
    name, driver, total = (s.strip() for s in r.stdout.splitlines()[0].split(","))
    return {"name": name, "driver": driver, "memory_total_bytes": int(float(total) * MiB)}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages the numbers depend on (None: not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("av", "grpcio", "protobuf", "onnxruntime", "torch", "PyNvVideoCodec", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------- memory and CPU of the server


def _smi(query: str, what: str) -> list[list[str]]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    r = subprocess.run(
        [smi, f"--query-{what}={query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        return []
    return [[c.strip() for c in line.split(",")] for line in r.stdout.splitlines() if line.strip()]


def _scrape(metrics_port: int | None) -> str:
    """The server's /metrics text ("" without a port or when it does not answer)."""
    if metrics_port is None:
        return ""
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def _gpu_metrics(metrics_port: int | None) -> dict[str, float]:
    """Samples of the server's /metrics whose name mentions gpu, cuda or torch (e.g. torch's
    reserved memory, if the server exports it)."""
    out: dict[str, float] = {}
    for line in _scrape(metrics_port).splitlines():
        if line.startswith("#") or not re.match(r"\S*(gpu|cuda|torch)", line, re.I):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def loop_lag(metrics_text: str) -> tuple[float, float, float] | None:
    """The servers' event-loop lag histogram summed over their loops: (seconds, samples,
    samples later than 5 ms); None if the server does not export it."""
    from prometheus_client.parser import text_string_to_metric_families

    total = [0.0, 0.0, 0.0]
    found = False
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "vidtag_event_loop_lag_seconds":
            continue
        found = True
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                total[0] += sample.value
            elif sample.name.endswith("_count"):
                total[1] += sample.value
                total[2] += sample.value
            elif sample.name.endswith("_bucket") and sample.labels.get("le") == "0.005":
                total[2] -= sample.value
    return (total[0], total[1], total[2]) if found else None


def counter_by(metrics_text: str, family_name: str, label: str, **match: str) -> dict[str, float]:
    """A counter family's totals by one label's value, summed over the rest (and over the
    server processes); only samples whose labels equal `match`."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != family_name:
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_total") and all(labels.get(k) == v for k, v in match.items()):
                key = labels.get(label, "0")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def readings(metrics_port: int | None) -> dict[str, Any]:
    """One scrape of the server's metrics: its event-loop lag (`loop_lag`), TagVideo RPCs
    answered so far by each server process (the merged metrics' `server` label; "0" for a
    single process) and clips decoded by shares."""
    text = _scrape(metrics_port)
    return {
        "lag": loop_lag(text),
        "answered": counter_by(text, "vidtag_requests", "server", method="TagVideo"),
        "shares": counter_by(text, "vidtag_decode_shares", "shares"),
    }


def split_share(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Percent of the clips decoded over a step that were split over several decoders
    (`vidtag_decode_shares_total`); None where the server does not count them."""
    counts = {k: after[k] - before.get(k, 0.0) for k in after}
    total = sum(counts.values())
    if total <= 0:
        return None
    return 100 * sum(v for k, v in counts.items() if k != "1") / total


def spread(before: dict[str, float], after: dict[str, float]) -> dict[str, Any] | None:
    """Requests per server process over a step, and the busiest one's against the mean (1.0:
    even; SO_REUSEPORT spreads connections, not requests)."""
    counts = {k: after[k] - before.get(k, 0.0) for k in sorted(after)}
    total = sum(counts.values())
    if not counts or total <= 0:
        return None
    return {"per_server": counts, "max_over_mean": max(counts.values()) * len(counts) / total}


def lag_summary(
    before: tuple[float, float, float] | None, after: tuple[float, float, float] | None
) -> dict[str, float] | None:
    """Mean event-loop lag (ms) over a step and the share of samples later than 5 ms (%)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    n = after[1] - before[1]
    return {
        "mean_ms": (after[0] - before[0]) / n * 1000,
        "over_5ms_pct": 100 * (after[2] - before[2]) / n,
    }


def memory_sample(pid: int, metrics_port: int | None) -> dict[str, Any]:
    """GPU memory used by the server's process tree and by the whole device (bytes, from
    nvidia-smi), RSS of the tree, and any GPU memory the server's metrics report."""
    pids = set(process_tree(pid))
    apps = _smi("pid,used_memory", "compute-apps")
    mine = [float(m) for p, m in apps if p.isdigit() and int(p) in pids and _num(m)]
    device = _smi("memory.used", "gpu")
    return {
        "gpu_process_bytes": int(sum(mine) * MiB) if mine else None,
        "gpu_device_bytes": int(float(device[0][0]) * MiB)
        if device and _num(device[0][0])
        else None,
        "rss_bytes": int(tree_rss_mb(pid) * MiB),
        "server_metrics": _gpu_metrics(metrics_port),
    }


def _num(s: str) -> bool:
    with contextlib.suppress(ValueError):
        float(s)
        return True
    return False


class GpuSampler:
    """Mean and max GPU (SM) and NVDEC utilisation in % over a step, read from nvidia-smi every
    `every` seconds in a thread; empty without nvidia-smi."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.rows: list[list[float]] = []
        self.fields: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        # Older drivers do not know utilization.decoder, and then answer no field at all.
        for query in ("utilization.gpu,utilization.decoder", "utilization.gpu"):
            rows = _smi(query, "gpu")
            if rows and all(_num(v) for v in rows[0]):
                self.fields = query.split(",")
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
                break
        return self

    def _run(self) -> None:
        query = ",".join(self.fields)
        while not self._stop.wait(self.every):
            rows = _smi(query, "gpu")
            if rows and all(_num(v) for v in rows[0]):
                self.rows.append([float(v) for v in rows[0]])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, float]:
        if not self.rows:
            return {}
        a = np.asarray(self.rows)
        names = [f.removeprefix("utilization.") for f in self.fields]
        out = {f"{n}_mean": float(a[:, i].mean()) for i, n in enumerate(names)}
        return out | {f"{n}_max": float(a[:, i].max()) for i, n in enumerate(names)}


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU seconds of the server's process tree (/proc/PID/stat), and of its
    decode worker processes among them (named WORKER_NAME)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = workers = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            name, rest = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)
            fields = rest.split()
            ticks = int(fields[11]) + int(fields[12])
            total += ticks
            workers += ticks if name.partition("(")[2] == WORKER_NAME else 0
    return total / tick, workers / tick


# ---------------------------------------------------------------- load (vidtag bench's generator)


def _client_part(
    target: str,
    paths: Sequence[str],
    concurrency: int,
    seconds: float | None,
    requests: int | None,
    start_at: float,
    timeout: float,
    input: InputMode = "bytes",
    connections: int = 1,
) -> tuple[Step, float]:
    """One client process's share of a closed-loop step: (step, its CPU seconds)."""
    clips = read_clips([Path(p) for p in paths])
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = time.process_time()
    plan = Plan(concurrencies=(concurrency,), requests=requests, duration_s=seconds)
    options = CallOptions(timeout=timeout, input=input, connections=connections)
    (step,) = asyncio.run(run_plan(target, clips, plan, options))
    return step, time.process_time() - cpu0


def _warm_client(_: int) -> int:
    """Import what a client needs, so no step times a process start."""
    import grpc  # noqa: F401

    from vidtag.v1 import tagger_pb2_grpc  # noqa: F401

    return os.getpid()


class Load:
    """Closed-loop steps through `vidtag bench`'s `run_plan`, split over client processes."""

    def __init__(self, procs: int, timeout: float, connections: int = 1) -> None:
        self.procs, self.timeout, self.connections = procs, timeout, connections
        self.pool: cf.ProcessPoolExecutor | None = None
        if procs > 1:
            ctx = multiprocessing.get_context("spawn")  # no fork after grpc/PyAV are loaded
            self.pool = cf.ProcessPoolExecutor(procs, mp_context=ctx)
            list(self.pool.map(_warm_client, range(procs)))  # imports done before any timing

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def step(
        self,
        target: str,
        paths: Sequence[Path],
        concurrency: int,
        *,
        seconds: float | None = None,
        requests: int | None = None,
        warmup: int = 0,
        server_pid: int | None = None,
        input: InputMode = "bytes",
        metrics_port: int | None = None,
    ) -> dict[str, Any]:
        """Warm-up requests (not counted), then one measured step; its bench summary plus
        client and server CPU use (cores busy on average), payload MB/s uploaded (0 with
        `input="path"`: the requests carry file paths and the server reads the files) and,
        from the server's metrics, its event loop's lag."""
        strs = [str(p) for p in paths]
        if warmup:
            plan = Plan(concurrencies=(concurrency,), requests=warmup)
            clips = read_clips(paths)
            options = CallOptions(timeout=self.timeout, input=input, connections=self.connections)
            asyncio.run(run_plan(target, clips, plan, options))
        n = max(1, min(self.procs, concurrency))
        conc = [concurrency // n + (i < concurrency % n) for i in range(n)]
        reqs: list[int | None] = [None] * n
        if requests is not None:
            reqs = [requests // n + (i < requests % n) for i in range(n)]
        srv0 = cpu_seconds(server_pid) if server_pid else (0.0, 0.0)
        before = readings(metrics_port)
        t0 = time.monotonic()
        with GpuSampler() as gpu:
            if n == 1 or self.pool is None:
                one = _client_part(
                    target,
                    strs,
                    concurrency,
                    seconds,
                    requests,
                    0.0,
                    self.timeout,
                    input,
                    self.connections,
                )
                parts = [one]
            else:
                start_at = time.time() + 0.3
                futures = [
                    self.pool.submit(
                        _client_part,
                        target,
                        strs,
                        c,
                        seconds,
                        r,
                        start_at,
                        self.timeout,
                        input,
                        self.connections,
                    )
                    for c, r in zip(conc, reqs, strict=True)
                ]
                parts = [f.result() for f in futures]
        wall = time.monotonic() - t0
        srv1 = cpu_seconds(server_pid) if server_pid else None
        srv = (srv1[0] - srv0[0]) / wall if srv1 else None
        decoders = (srv1[1] - srv0[1]) / wall if srv1 else None
        merged = Step("closed", float(concurrency), input=input)
        merged.wall_s = max(s.wall_s for s, _ in parts)
        merged.samples = sorted((x for s, _ in parts for x in s.samples), key=lambda x: x.sent_s)
        summary = merged.summary()
        sizes = [Path(p).stat().st_size for p in strs] or [0]
        mean_bytes = float(np.mean([sizes[s.clip % len(sizes)] for s in merged.samples] or [0]))
        uploaded = mean_bytes if input == "bytes" else 0.0
        summary["payload_mb_s"] = summary["throughput_clips_s"] * uploaded / 1e6
        summary["client_procs"] = n
        summary["client_cpu"] = max(cpu / s.wall_s if s.wall_s else 0.0 for s, cpu in parts)
        summary["server_cpu_cores"] = srv  # server and decode worker processes
        summary["decoder_cpu_cores"] = decoders  # the decode worker processes among them
        summary["gpu_utilization_pct"] = gpu.summary()
        after = readings(metrics_port)
        summary["loop_lag"] = lag_summary(before["lag"], after["lag"])
        summary["server_spread"] = spread(before["answered"], after["answered"])
        summary["split_pct"] = split_share(before["shares"], after["shares"])
        return summary


# ---------------------------------------------------------------- configurations and phases


@dataclass
class Config:
    model: Model
    decoder: str
    runtime: str  # "auto": no --runtime flag
    memory: bool = False  # this configuration runs the memory phase
    servers: int = 1  # vidtag serve --server-processes
    shares: int | None = None  # vidtag serve --decode-shares (None: the server's default)
    mps: str | None = None  # vidtag serve --cuda-mps (None: the server's default)

    @property
    def label(self) -> str:
        name = decoder_name(self.decoder, self.servers, self.shares, self.mps)
        return f"{self.model.label} / {name} / {self.runtime}"


def decoder_name(
    decoder: str, servers: int = 1, shares: int | None = None, mps: str | None = None
) -> str:
    """The decoder column: `nvdec`, `nvdec x4` for four server processes, `nvdec s1` for
    --decode-shares 1, `nvdec m` for --cuda-mps on."""
    return (
        decoder
        + (f" x{servers}" if servers > 1 else "")
        + (f" s{shares}" if shares else "")
        + (" m" if mps == "on" else "")
    )


def clip_folder(args: argparse.Namespace) -> Path:
    """Where the clips are encoded and cached: the server's --allow-path-root."""
    return Path(os.path.abspath(args.cache / "clips"))


def path_input(help_text: str) -> bool:
    """Whether this vidtag serve can read clips by path (--allow-path-root)."""
    return has_flag(help_text, "--allow-path-root")


def serve_args(cfg: Config, args: argparse.Namespace, help_text: str) -> list[str]:
    """`vidtag serve` flags for one configuration: batching sized for throughput, large queues,
    the decoder's workers, path inputs from the clip folder; GPU flags only when the server has
    them."""
    a = [
        "--models", str(cfg.model.repository), "--model", cfg.model.name,
        "--model-version", cfg.model.version,
        "--max-batch-size", str(args.max_batch_size),
        "--max-queue-delay-microseconds", str(args.queue_delay_us),
        "--max-queue-size", "2048", "--decode-queue-size", "2048",
        "--repository-poll-s", "0", "--grace-s", "2",
    ]  # fmt: skip
    if has_flag(help_text, "--device"):
        a += ["--device", args.device]
    if args.device != "cpu" and has_flag(help_text, "--precision"):
        a += ["--precision", args.precision]
    if cfg.runtime != "auto":
        a += ["--runtime", cfg.runtime]
    if has_flag(help_text, "--decode-backend"):
        a += ["--decode-backend", cfg.decoder]
    if cfg.decoder in ("pyav", "hybrid"):
        a += ["--workers", str(args.cpu_workers)]  # CPU decode worker processes
    if cfg.decoder in ("nvdec", "hybrid") and has_flag(help_text, "--nvdec-workers"):
        a += ["--nvdec-workers", str(args.nvdec_workers)]  # NVDEC decoders (processes)
    if path_input(help_text):
        a += ["--allow-path-root", str(clip_folder(args))]  # the latency phase's path row
    if cfg.servers > 1:
        a += ["--server-processes", str(cfg.servers)]
    if cfg.shares is not None and has_flag(help_text, "--decode-shares"):
        a += ["--decode-shares", str(cfg.shares)]
    if cfg.mps is not None and has_flag(help_text, "--cuda-mps"):
        a += ["--cuda-mps", cfg.mps]
    return a + list(args.serve_arg)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def memory_phase(
    load: Load,
    target: str,
    pid: int,
    metrics_port: int,
    paths: Sequence[Path],
    args: argparse.Namespace,
    budget: Budget,
) -> dict[str, Any]:
    """Closed loop over the mixed clips: memory before, after the first `memory_first`
    clips, then after each chunk up to `memory_clips` (or until its time is up)."""
    t_end = time.monotonic() + min(args.memory_s, max(0.0, budget.left() - args.reserve_s))
    samples = [{"clips": 0, **memory_sample(pid, metrics_port)}]
    done, ok, errors, wall = 0, 0, 0, 0.0
    by_status: dict[str, int] = {}
    chunk = args.memory_first
    while done < args.memory_clips and time.monotonic() < t_end:
        n = min(chunk, args.memory_clips - done)
        s = load.step(target, paths, args.memory_concurrency, requests=n)
        done += s["requests"]
        ok += s["ok"]
        errors += s["requests"] - s["ok"]
        for k, v in s["errors"].items():
            by_status[k] = by_status.get(k, 0) + v
        wall += s["wall_s"]
        samples.append({"clips": done, "t_s": round(wall, 2), **memory_sample(pid, metrics_port)})
        # Later chunks: about 10 s of work each, so the phase stops close to its time.
        rate = ok / wall if wall > 0 else 1.0
        chunk = int(max(args.memory_first, min(args.memory_chunk, rate * 10)))
    measure = "rss_bytes"
    for key in ("gpu_process_bytes", "gpu_device_bytes"):
        if all(s[key] is not None for s in samples):
            measure = key
            break
    first = next((s for s in samples if s["clips"] >= args.memory_first), None)
    last = samples[-1]
    growth = None
    if first is not None and last is not first and first[measure]:
        growth = (last[measure] - first[measure]) / first[measure]
    print(
        f"  memory: {done} clips ({ok} ok, {errors} failed) in {wall:.1f} s; {measure} "
        + " -> ".join(
            f"{s['clips']}: {s[measure] / MiB:.0f} MiB" for s in (samples[0], first, last) if s
        )
        + (f"; growth {growth:+.2%}" if growth is not None else ""),
        flush=True,
    )
    return {
        "clips": done,
        "target_clips": args.memory_clips,
        "first_clips": args.memory_first,
        "concurrency": args.memory_concurrency,
        "ok": ok,
        "errors": errors,
        "errors_by_status": by_status,
        "wall_s": wall,
        "throughput_clips_s": ok / wall if wall else 0.0,
        "measure": measure,
        "before": samples[0][measure],
        "after_first": first[measure] if first else None,
        "after_last": last[measure],
        "growth": growth,
        "samples": samples,
    }


def run_config(
    cfg: Config,
    args: argparse.Namespace,
    help_text: str,
    clips: dict[str, list[Path]],
    load: Load,
    budget: Budget,
    phases: set[str],
) -> dict[str, Any]:
    """A fresh server for `cfg`, then its phases; the configuration's JSON record."""
    extra = serve_args(cfg, args, help_text)
    # Per client process: the kernel hashes each connection to one server process, so a few
    # connections can leave one server most of the load (the spread column shows it).
    load.connections = args.connections or (1 if cfg.servers == 1 else 4 * cfg.servers)
    metrics_port = _free_port()
    extra += ["--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"]
    logs = args.cache / "logs" / re.sub(r"[^\w.-]+", "_", cfg.label)
    rec: dict[str, Any] = {
        "model": cfg.model.label,
        "model_key": cfg.model.key,
        "model_input": cfg.model.input,
        "decoder": cfg.decoder,
        "servers": cfg.servers,
        "shares": cfg.shares,
        "mps": cfg.mps,
        "runtime": cfg.runtime,
        "serve_args": extra,
        "server_log": str(logs / "server.log"),
        "status": "ok",
        "steps": {},
    }
    print(f"\n== {cfg.label}", flush=True)
    t0 = time.monotonic()
    try:
        with serve(logs, None, extra) as (target, pid):
            rec["startup_s"] = time.monotonic() - t0
            rec["memory_at_start"] = memory_sample(pid, metrics_port)
            print(f"  SERVING after {rec['startup_s']:.1f} s (pid {pid})", flush=True)
            if cfg.memory and "memory" in phases:
                rec["memory"] = memory_phase(
                    load, target, pid, metrics_port, clips["mixed"], args, budget
                )
            # Latency at c=1, uploading the clip ("1") and naming its file ("1:path").
            inputs: list[InputMode] = ["bytes", "path"] if "latency" in phases else []
            for inp in inputs:
                key = LATENCY_STEPS[inp]
                if inp == "path" and not path_input(help_text):
                    why = f"latency {inp} (vidtag serve has no --allow-path-root)"
                    rec["skipped_phases"] = [*rec.get("skipped_phases", []), why]
                    print(f"  skipped: {why}", flush=True)
                elif budget.left() < args.latency_s + args.reserve_s:
                    why = f"latency {inp} (budget)"
                    rec["skipped_phases"] = [*rec.get("skipped_phases", []), why]
                    print(f"  skipped: {why}", flush=True)
                else:
                    s = load.step(
                        target,
                        clips["bar"],
                        1,
                        seconds=args.latency_s,
                        warmup=5,
                        server_pid=pid,
                        input=inp,
                        metrics_port=metrics_port,
                    )
                    rec["steps"][key] = s
                    _print_step(1, s)
            # Throughput: uploads (key "c"), then with --throughput-inputs path too ("c:path").
            for inp in args.throughput_inputs if "throughput" in phases else ():
                if inp == "path" and not path_input(help_text):
                    why = "throughput path (vidtag serve has no --allow-path-root)"
                    rec["skipped_phases"] = [*rec.get("skipped_phases", []), why]
                    continue
                for c in args.concurrency:
                    key = str(c) if inp == "bytes" else f"{c}:{inp}"
                    if budget.left() < args.step_s + args.reserve_s:
                        rec["skipped_phases"] = [
                            *rec.get("skipped_phases", []),
                            f"c={key} (budget)",
                        ]
                        continue
                    s = load.step(
                        target,
                        clips["bar"],
                        c,
                        seconds=args.step_s,
                        warmup=c,
                        server_pid=pid,
                        input=inp,
                        metrics_port=metrics_port,
                    )
                    rec["steps"][key] = s
                    _print_step(c, s)
            rec["memory_at_end"] = memory_sample(pid, metrics_port)
    except Exception as exc:  # a server that did not come up, or a phase that broke
        rec["status"] = "failed"
        rec["reason"] = f"{type(exc).__name__}: {exc}"
        log = logs / "server.log"
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.is_file() else []
        rec["server_log_tail"] = tail
        print(f"  FAILED: {exc}\n    " + "\n    ".join(tail), flush=True)
    rec["wall_s"] = time.monotonic() - t0
    return rec


def _spread_text(s: dict[str, Any]) -> str:
    sp = s.get("server_spread")
    if not sp or len(sp["per_server"]) < 2:
        return ""
    counts = "/".join(f"{v:.0f}" for v in sp["per_server"].values())
    return f"; requests per server {counts}, busiest {sp['max_over_mean']:.2f}x the mean"


def _print_step(c: int, s: dict[str, Any]) -> None:
    lat, srv, lag = s["latency_ms"], s["server_ms"], s.get("loop_lag")
    print(
        f"  c={c:<4d} {s['input']:<5} {s['ok']:>6d} ok {s['requests'] - s['ok']:>4d} failed  "
        f"{s['throughput_clips_s']:8.1f} clips/s  p50 {_ms(lat['p50'])}  p99 {_ms(lat['p99'])} ms"
        f"  (decode {_ms(srv.get('decode_ms'))}, inference {_ms(srv.get('inference_ms'))}, "
        f"waits: decoder {_ms(srv.get('decode_wait_ms'))} transfer {_ms(srv.get('transfer_ms'))} "
        f"batch {_ms(srv.get('batch_wait_ms'))}; batch {srv.get('batch_size', 0.0):.1f}, "
        f"loop lag {_ms((lag or {}).get('mean_ms'))}, split {_pct(s.get('split_pct'))} %"
        f"{_spread_text(s)})",
        flush=True,
    )


# ---------------------------------------------------------------- report


def _dec(c: dict[str, Any]) -> str:
    return decoder_name(c["decoder"], c.get("servers", 1), c.get("shares"), c.get("mps"))


def evaluate_bars(
    configs: Sequence[dict[str, Any]], dry: bool, clip: str = "30 s 540x960 H.264, GOP 4 s"
) -> list[dict[str, Any]]:
    """The issue's bars over the configurations that ran (`clip`: the c=1 clips): the p50 bar
    once per input mode (clip uploaded, then clip read by the server from its path), then
    throughput, then memory."""
    ran = [c for c in configs if c["status"] == "ok"]
    bars: list[dict[str, Any]] = []

    how = {
        "bytes": "clip bytes uploaded in each request: end to end, as an uploading client sees it",
        "path": "clip named by its path and read by the server: no upload",
    }
    for inp, key in LATENCY_STEPS.items():
        lat = [
            (c["steps"][key]["latency_ms"]["p50"], c)
            for c in ran
            if c["model_key"] == "default"
            and key in c["steps"]
            and c["steps"][key]["latency_ms"]["p50"] is not None
            and not c["steps"][key]["errors"]
        ]
        best = min(lat, key=lambda x: x[0], default=None)
        bars.append(
            {
                "bar": f"p50 <= {P50_BAR_MS:g} ms at concurrency 1, input {inp} ({how[inp]}; "
                f"default model, {clip})",
                "input": inp,
                "passed": best is not None and best[0] <= P50_BAR_MS,
                "value": best[0] if best else None,
                "where": f"{best[1]['model']} / {_dec(best[1])} / {best[1]['runtime']}"
                if best
                else "not measured",
            }
        )

    # End to end: steps that uploaded their clips.
    steps = [
        (s, c, k)
        for c in ran
        if c["model_key"] == R2P1D
        for k, s in c["steps"].items()
        if s.get("input", "bytes") == "bytes"
        and not s["errors"]
        and s["latency_ms"]["p99"] is not None
    ]
    within = [x for x in steps if x[0]["latency_ms"]["p99"] <= P99_BAR_MS]
    pick = max(within or steps, key=lambda x: x[0]["throughput_clips_s"], default=None)
    paths = [  # throughput steps of path input (not the c=1 latency step)
        s["throughput_clips_s"]
        for c in ran
        if c["model_key"] == R2P1D
        for k, s in c["steps"].items()
        if s.get("input") == "path"
        and k not in LATENCY_STEPS.values()
        and not s["errors"]
        and s["latency_ms"]["p99"] is not None
        and s["latency_ms"]["p99"] <= P99_BAR_MS
    ]
    bars.append(
        {
            "bar": f">= {THROUGHPUT_BAR:g} clips/s with R(2+1)D-18 at p99 <= {P99_BAR_MS:g} ms",
            "passed": bool(within)
            and pick is not None
            and pick[0]["throughput_clips_s"] >= THROUGHPUT_BAR,
            "value": pick[0]["throughput_clips_s"] if pick else None,
            "p99_ms": pick[0]["latency_ms"]["p99"] if pick else None,
            "where": f"{_dec(pick[1])} / {pick[1]['runtime']}, c={pick[2]}"
            if pick
            else "not measured",
            # Not the bar (uploads are): the best path-input step within the p99, if any ran.
            "path_input_clips_s": max(paths) if paths else None,
        }
    )

    mems = [c for c in ran if "memory" in c]
    gpu = [c for c in mems if c["memory"]["measure"] != "rss_bytes"]
    judged = mems if dry else gpu
    complete = [c for c in judged if c["memory"]["clips"] >= c["memory"]["target_clips"]]
    growths = [c["memory"]["growth"] for c in judged if c["memory"]["growth"] is not None]
    worst = max(judged, key=lambda c: abs(c["memory"]["growth"] or 0.0), default=None)
    notes = []
    if mems and not judged:
        notes.append("no GPU memory reading")
    notes += [
        f"{c['model']} / {_dec(c)}: {c['memory']['clips']} of {c['memory']['target_clips']} clips"
        for c in judged
        if c not in complete
    ]
    bars.append(
        {
            "bar": f"memory growth within {MEMORY_BAR:.0%} from the first "
            f"{judged[0]['memory']['first_clips'] if judged else 100} clips to the last",
            "passed": bool(judged)
            and len(complete) == len(judged)
            and len(growths) == len(judged)
            and all(abs(g) <= MEMORY_BAR for g in growths),
            "value": worst["memory"]["growth"] if worst else None,
            "where": f"{worst['model']} / {_dec(worst)} ({worst['memory']['measure']})"
            if worst
            else "not measured",
            "notes": notes,
        }
    )
    return bars


def table(configs: Sequence[dict[str, Any]]) -> str:
    head = (
        f"{'model':<24} {'decoder':<12} {'runtime':<7} {'input':<5} {'c':>4} {'reqs':>6} "
        f"{'err':>4} {'clips/s':>8} {'p50':>7} {'p90':>7} {'p99':>7} {'decode':>7} {'infer':>7} "
        f"{'rest':>7} {'decWt':>6} {'xfer':>5} {'batWt':>6} {'prep':>5} "
        f"{'e2e-tot':>7} {'batch':>5} {'MB/s':>6} {'srvCPU':>6} {'decCPU':>6} "
        f"{'cliCPU':>6} "
        f"{'GPU%':>5} {'NVDEC%':>6} {'lag':>5} {'sprd':>5}"
    )
    rows = [head, "-" * len(head)]
    for c in configs:
        pre = f"{c['model']:<24} {_dec(c):<12} {c['runtime']:<7}"
        if c["status"] != "ok":
            rows.append(f"{pre} {c['status']}: {c.get('reason', '')}")
            continue
        for s in c["steps"].values():
            lat, srv = s["latency_ms"], s["server_ms"]
            cpu, gpu = s["server_cpu_cores"], s.get("gpu_utilization_pct", {})
            conc = f"{s['load']:g}"
            rows.append(
                f"{pre} {s.get('input', 'bytes'):<5} {conc:>4} {s['requests']:>6} "
                f"{s['requests'] - s['ok']:>4} "
                f"{s['throughput_clips_s']:>8.1f} {_ms(lat['p50']):>7} {_ms(lat['p90']):>7} "
                f"{_ms(lat['p99']):>7} {_ms(srv.get('decode_ms')):>7} "
                f"{_ms(srv.get('inference_ms')):>7} {_ms(srv.get('other_ms')):>7} "
                f"{_ms(srv.get('decode_wait_ms')):>6} {_ms(srv.get('transfer_ms')):>5} "
                f"{_ms(srv.get('batch_wait_ms')):>6} {_ms(srv.get('preprocess_ms')):>5} "
                f"{_ms(srv.get('e2e_minus_total_ms')):>7} {srv.get('batch_size', 0.0):>5.1f} "
                f"{s['payload_mb_s']:>6.0f} {_ms(cpu):>6} {_ms(s.get('decoder_cpu_cores')):>6} "
                f"{s['client_cpu']:>6.2f} "
                f"{_pct(gpu.get('gpu_mean')):>5} {_pct(gpu.get('decoder_mean')):>6} "
                f"{_ms((s.get('loop_lag') or {}).get('mean_ms')):>5} "
                f"{_ratio((s.get('server_spread') or {}).get('max_over_mean')):>5}"
            )
        if not c["steps"]:
            rows.append(f"{pre} (no load steps)")
    return "\n".join(rows)


def memory_table(configs: Sequence[dict[str, Any]]) -> str:
    first = next((c["memory"]["first_clips"] for c in configs if "memory" in c), 0)
    head = (
        f"{'model':<24} {'decoder':<12} {'measure':<18} {'clips':>6} {'before':>9} "
        f"{f'after {first}':>9} {'at end':>9} {'growth':>8} {'errors':>6} server gpu metrics"
    )
    rows = [head, "-" * len(head)]
    for c in configs:
        m = c.get("memory")
        if not m:
            continue

        def mib(x: int | None) -> str:
            return "-" if x is None else f"{x / MiB:.0f}M"

        extra = m["samples"][-1]["server_metrics"]
        rows.append(
            f"{c['model']:<24} {_dec(c):<12} {m['measure']:<18} {m['clips']:>6} "
            f"{mib(m['before']):>9} {mib(m['after_first']):>9} {mib(m['after_last']):>9} "
            f"{'-' if m['growth'] is None else format(m['growth'], '+.2%'):>8} "
            f"{m['errors']:>6} "
            + (", ".join(f"{k}={v:.0f}" for k, v in list(extra.items())[:3]) or "-")
        )
    return "\n".join(rows)


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- CLI


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _tokens(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU smoke run (small everything)")
    p.add_argument("--minutes", type=float, default=None, help="whole-run budget (8; dry 2)")
    p.add_argument(
        "--only",
        type=_tokens,
        default=[],
        metavar="T,...",
        help="run only these "
        "models (default, r2plus1d_18; run in the order named), decoders, runtimes and "
        "phases (memory, latency, throughput)",
    )
    p.add_argument("--skip", type=_tokens, default=[], metavar="T,...", help="skip these")
    p.add_argument("--device", default=None, help="server --device (cuda; dry: cpu)")
    p.add_argument("--precision", default="fp16", help="server --precision on a GPU (fp16)")
    p.add_argument("--decoders", type=_tokens, default=list(DECODERS), metavar="D,...")
    p.add_argument(
        "--runtimes",
        type=_tokens,
        default=None,
        metavar="R,...",
        help="server --runtime values; auto passes none (auto; dry: onnx,torch when "
        "the server has --runtime)",
    )
    p.add_argument("--concurrency", type=_ints, default=None, help="throughput steps (8,64,256)")
    p.add_argument(
        "--throughput-inputs",
        type=_tokens,
        default=["bytes"],
        metavar="I,...",
        help="input modes of the throughput steps: bytes (uploads; the bar), path (bytes)",
    )
    p.add_argument("--latency-s", type=float, default=None, help="c=1 seconds (8; dry 2)")
    p.add_argument("--step-s", type=float, default=None, help="s per throughput step (6; dry 2)")
    p.add_argument("--memory-clips", type=int, default=None, help="clips (10000; dry 200)")
    p.add_argument("--memory-first", type=int, default=100, help="first reading after (100)")
    p.add_argument("--memory-chunk", type=int, default=None, help="clips between readings")
    p.add_argument("--memory-s", type=float, default=None, help="phase time cap (100; dry 30)")
    p.add_argument("--memory-concurrency", type=int, default=None, help="(64; dry 4)")
    p.add_argument("--client-procs", type=int, default=None, help="client processes (4; dry 1)")
    p.add_argument(
        "--server-processes",
        type=_ints,
        default=[1],
        metavar="N,...",
        help="vidtag serve --server-processes, one configuration each (1; e.g. 1,4)",
    )
    p.add_argument(
        "--decode-shares",
        type=_ints,
        default=None,
        metavar="N,...",
        help="vidtag serve --decode-shares, one configuration each (the server's default; "
        "e.g. 1,4)",
    )
    p.add_argument(
        "--cuda-mps",
        type=lambda v: v.split(","),
        default=None,
        metavar="off,on",
        help="vidtag serve --cuda-mps, one configuration each (the server's default)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=None,
        help="connections per client process, used in turn (1; 4 per server process with "
        "--server-processes above 1)",
    )
    p.add_argument(
        "--cpu-workers",
        type=int,
        default=None,
        help="server --workers for CPU decode (cores - client procs)",
    )
    p.add_argument("--nvdec-workers", type=int, default=8, help="server --nvdec-workers (8)")
    p.add_argument("--max-batch-size", type=int, default=None, help="server batching (64; dry 8)")
    p.add_argument("--queue-delay-us", type=int, default=0, help="server queue delay (0)")
    p.add_argument("--serve-arg", action="append", default=[], help="extra serve flag")
    p.add_argument("--bar-clips", type=int, default=4, help="distinct 540x960 clips (4)")
    p.add_argument("--r2plus1d-input", default=None, help="FxS of R(2+1)D-18 (8x112; dry 4x56)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request deadline, s")
    p.add_argument("--cache", type=Path, default=CACHE, help="clips, models, logs")
    p.add_argument("--out", type=Path, default=None, help="JSON (build/gpu-bench/gpu.json)")
    args = p.parse_args(argv)
    dry = args.dry_run
    cores = os.cpu_count() or 1

    def pick(name: str, device_default: Any, dry_default: Any) -> None:
        if getattr(args, name) is None:
            setattr(args, name, dry_default if dry else device_default)

    pick("minutes", 8.0, 2.0)
    pick("device", "cuda", "cpu")
    pick("concurrency", [8, 64, 256], [2, 4])
    pick("latency_s", 8.0, 2.0)
    pick("step_s", 6.0, 2.0)
    pick("memory_clips", 10_000, 200)
    pick("memory_chunk", 1000, 100)
    pick("memory_s", 100.0, 30.0)  # 10 000 clips at the ~130-160 clips/s of NVDEC processes
    pick("memory_concurrency", 64, 4)
    pick("client_procs", 4, 1)
    pick("max_batch_size", 64, 8)
    pick("r2plus1d_input", "8x112", "4x56")
    pick("out", args.cache / "gpu.json", args.cache / "gpu-dry.json")
    pick("cpu_workers", max(1, cores - args.client_procs), max(1, min(2, cores)))
    args.reserve_s = 5.0 if dry else 10.0  # left for shutting the server down and reporting
    known = {"default", R2P1D, *DECODERS, *RUNTIMES, *PHASES}
    if not args.server_processes or min(args.server_processes) < 1 or (args.connections or 1) < 1:
        p.error("--server-processes and --connections take numbers >= 1")
    if args.decode_shares is not None and (not args.decode_shares or min(args.decode_shares) < 1):
        p.error("--decode-shares takes numbers >= 1")
    if args.cuda_mps is not None and not set(args.cuda_mps) <= {"off", "on"}:
        p.error(f"--cuda-mps takes off and on, not {args.cuda_mps}")
    bad = [i for i in args.throughput_inputs if i not in LATENCY_STEPS]
    if bad or not args.throughput_inputs:
        p.error(f"--throughput-inputs takes {', '.join(LATENCY_STEPS)}, not {bad or 'nothing'}")
    for t in args.only + args.skip + args.decoders + (args.runtimes or []):
        if t not in known:
            p.error(f"unknown name {t!r}; known: {', '.join(sorted(known))}")
    return args


def _wanted(values: dict[str, str], only: Sequence[str], skip: Sequence[str]) -> bool:
    """Kept unless a value is in --skip; with --only naming any value of a category (model,
    decoder, runtime) in `values`, the value must be among them."""
    if any(v in skip for v in values.values()):
        return False
    groups = {"model": {"default", R2P1D}, "decoder": set(DECODERS), "runtime": set(RUNTIMES)}
    for cat, value in values.items():
        asked = [t for t in only if t in groups[cat]]
        if asked and value not in asked:
            return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    budget = Budget(args.minutes * 60.0)
    dry = args.dry_run
    phases = {ph for ph in PHASES if ph not in args.skip}
    if any(t in PHASES for t in args.only):
        phases &= set(args.only)
    help_text = serve_help()
    if not help_text:
        print("gpu bench: `python -m vidtag.cli serve --help` failed (stubs generated?)")
        return 2
    if args.device != "cpu" and not has_flag(help_text, "--device"):
        print(f"gpu bench: this vidtag serve has no --device flag: cannot run on {args.device}")
        return 2
    flags = ["--device", "--runtime", "--precision", "--decode-backend", "--nvdec-workers"]
    available = decoder_availability(args.device, help_text)
    runtimes = args.runtimes
    if runtimes is None:
        torch_ok = has_flag(help_text, "--runtime") and "torch" in help_text
        runtimes = ["onnx", "torch"] if dry and torch_ok else ["auto"]
    if any(r != "auto" for r in runtimes) and not has_flag(help_text, "--runtime"):
        print("gpu bench: this vidtag serve has no --runtime flag; use --runtimes auto")
        return 2
    gpu = gpu_info()
    if args.device != "cpu" and gpu is None:
        print(f"gpu bench: --device {args.device} but nvidia-smi finds no GPU (on a CPU-only "
              "machine use --dry-run)")  # fmt: skip
        return 2
    print(
        f"gpu bench{' (dry run)' if dry else ''}: budget {args.minutes:g} min, "
        f"device {args.device}, GPU {gpu['name'] if gpu else 'none'}, {os.cpu_count()} cores"
    )
    print(
        "  serve flags: "
        + ", ".join(f"{f} {'yes' if has_flag(help_text, f) else 'no'}" for f in flags)
    )
    print(
        "  decoders: "
        + ", ".join(f"{d} {'yes' if r is None else f'no ({r})'}" for d, r in available.items())
    )

    # Clips and models (their time counts in the budget).
    t0 = time.monotonic()
    size, seconds = ((270, 480), 3) if dry else ((540, 960), 30)
    bar_cfgs = bar_clips(size, seconds, args.bar_clips)
    mix_cfgs = mixed_clips(dry) if "memory" in phases else []
    clip_paths, gen_s = build_clips(bar_cfgs + mix_cfgs, clip_folder(args))
    clips = {"bar": clip_paths[: len(bar_cfgs)], "mixed": clip_paths[len(bar_cfgs) :]}
    print(
        f"  clips: {len(clip_paths)} ({sum(p.stat().st_size for p in clip_paths) / 1e6:.1f} MB)"
        f", encoded in {gen_s:.1f} s"
    )
    from vidtag.runtime.repository import default_repository

    models: list[Model] = []
    export_s = 0.0
    if _wanted({"model": "default"}, args.only, args.skip):
        models.append(default_model(default_repository(), args.cache))
    if _wanted({"model": R2P1D}, args.only, args.skip):
        frames, side = (int(v) for v in args.r2plus1d_input.lower().split("x"))
        m, export_s = r2plus1d_model(args.cache, frames, side)
        models.append(m)
        print(
            f"  {m.label}: {m.repository}"
            + (f" (exported in {export_s:.1f} s)" if export_s else " (cached)")
        )
    named = [t for t in args.only if t in ("default", R2P1D)]
    models.sort(key=lambda m: named.index(m.key) if m.key in named else 0)  # as --only names them
    prep_s = time.monotonic() - t0

    # Configurations: required decoders first (model-interleaved), optional ones last.
    configs: list[Config] = []
    skipped: list[dict[str, str]] = []
    order = [d for d in args.decoders if d not in OPTIONAL_DECODERS]
    order += [d for d in args.decoders if d in OPTIONAL_DECODERS]
    for dec in order:
        for m in models:
            for rt in runtimes:
                if not _wanted(
                    {"model": m.key, "decoder": dec, "runtime": rt}, args.only, args.skip
                ):
                    continue
                if available.get(dec) is not None:
                    skipped.append(
                        {
                            "model": m.label,
                            "decoder": dec,
                            "runtime": rt,
                            "reason": str(available[dec]),
                        }
                    )
                    continue
                configs += [
                    Config(m, dec, rt, servers=n, shares=k, mps=g)
                    for n in args.server_processes
                    for k in args.decode_shares or [None]
                    for g in args.cuda_mps or [None]
                ]
    for m in models:  # memory: the first configuration that runs per model
        first = next((c for c in configs if c.model is m), None)
        if first is not None:
            first.memory = True

    report: dict[str, Any] = {
        "tool": "benchmarks/gpu.py",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dry_run": dry,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "gpu": gpu,
            "packages": package_versions(),
        },
        "serve_flags": {f: has_flag(help_text, f) for f in flags},
        "decoders": available,
        "clips": {
            "bar": [
                {**asdict(c), "name": c.name, "bytes": p.stat().st_size}
                for c, p in zip(bar_cfgs, clips["bar"], strict=True)
            ],
            "mixed": [
                {**asdict(c), "name": c.name, "bytes": p.stat().st_size}
                for c, p in zip(mix_cfgs, clips["mixed"], strict=True)
            ],
            "encode_s": gen_s,
        },
        "models": [{**asdict(m), "repository": str(m.repository)} for m in models],
        "export_s": export_s,
        "prepare_s": prep_s,
        "configs": [],
        "skipped": skipped,
    }
    load = Load(args.client_procs, args.timeout, args.connections or 1)
    startup_est = 10.0 if dry else 30.0
    try:
        for cfg in configs:
            est = startup_est + 2 * args.latency_s + len(args.concurrency) * (args.step_s + 2)
            if cfg.memory and "memory" in phases:
                est += args.memory_s / 2
            # Optional decoders only while the budget covers them; the rest while anything is left.
            need = est if cfg.decoder in OPTIONAL_DECODERS else startup_est + args.reserve_s
            if budget.left() < need:
                skipped.append(
                    {
                        "model": cfg.model.label,
                        "decoder": cfg.decoder,
                        "runtime": cfg.runtime,
                        "reason": "time budget",
                    }
                )
                print(f"\n== {cfg.label}: skipped (time budget)", flush=True)
                continue
            rec = run_config(cfg, args, help_text, clips, load, budget, phases)
            if "startup_s" in rec:
                startup_est = max(startup_est, rec["startup_s"] + 5.0)
            report["configs"].append(rec)
            write_report(args.out, report)
    finally:
        load.close()

    clip = f"{seconds} s {size[0]}x{size[1]} H.264, GOP 4 s"
    report["bars"] = bars = evaluate_bars(report["configs"], dry, clip)
    report["wall_s"] = time.monotonic() - t_start
    write_report(args.out, report)
    print("\n" + table(report["configs"]))
    print(
        "(ms; decode/infer/rest = server means, rest = total - decode - inference; of the "
        "rest: decWt = waiting for a decoder, xfer = frames from a decode worker to the "
        "server, batWt = waiting for the batch, prep = preprocessing; "
        "e2e-tot = client latency - server total; batch = mean batch size; input = bytes "
        "(clip uploaded in each request) or path (the server reads the clip's file: the c=1 "
        "path row, throughput rows with --throughput-inputs path; memory uploads); MB/s uploaded; "
        "srvCPU = server cores busy (decode workers included); decCPU = decode workers' "
        "cores busy; cliCPU = busiest client process; GPU%/NVDEC% = mean "
        "utilisation from nvidia-smi; lag = the server's mean event-loop lag, from "
        "vidtag_event_loop_lag_seconds; sprd = the busiest server process's requests against "
        "the mean, with --server-processes)"
    )
    if any("memory" in c for c in report["configs"]):
        print("\n" + memory_table(report["configs"]))
    reasons: dict[str, list[str]] = {}
    for s in skipped:
        reasons.setdefault(s["reason"], []).append(f"{s['model']} / {s['decoder']}")
    for reason, which in reasons.items():
        print(f"skipped ({reason}): {', '.join(dict.fromkeys(which))}")
    print(
        "\nbars"
        + (
            " (dry run on CPU: the bars are for one H100; shown to exercise the path)"
            if dry
            else ""
        )
    )
    for b in bars:
        val = b["value"]
        shown = "-" if val is None else (f"{val:+.2%}" if "memory" in b["bar"] else f"{val:.1f}")
        extra = f", p99 {_ms(b['p99_ms'])} ms" if "p99_ms" in b else ""
        where = b["where"] + (f"; {'; '.join(b['notes'])}" if b.get("notes") else "")
        if b.get("path_input_clips_s") is not None:
            where += f"; path input, not the bar: {b['path_input_clips_s']:.1f} clips/s"
        print(f"  {'PASS' if b['passed'] else 'FAIL'}  {b['bar']}: {shown}{extra} ({where})")
    print(f"\nwall {report['wall_s']:.0f} s; report: {args.out}")
    ran = [c for c in report["configs"] if c["status"] == "ok"]
    if not ran:
        return 2
    if dry:
        clean = all(
            c["status"] == "ok"
            and all(not s["errors"] for s in c["steps"].values())
            and not c.get("memory", {}).get("errors")
            for c in report["configs"]
        )
        return 0 if clean else 1
    return 0 if all(b["passed"] for b in bars) else 1


if __name__ == "__main__":
    sys.exit(main())
