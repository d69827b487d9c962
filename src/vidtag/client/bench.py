"""`vidtag bench`: closed- and open-loop load against a vidtag server, with JSON and PNG reports.

Closed loop (`--concurrency N`, `--sweep 1,2,4`): N workers each send the next clip as soon as
their previous answer arrived. Open loop (`--rate R`, `--rates 5,10,20`): Poisson arrivals at R
requests/s, each sent at its scheduled time however many are outstanding, its latency measured
from that scheduled time, so client-side queueing counts (no coordinated omission).

Latency percentiles are over successful requests; failures are counted by status code. Server
timings come from each response's `Timings` (every numeric field the stubs know, so `queue_ms`
or `batch_size` show up when the server sends them); the split reports decode, inference and
other = total - decode - inference, and e2e - total: transport, gRPC, the client, and any server
queueing that `total_ms` leaves out (compare `queue_ms`).

Input (`--input`): `bytes` (default) sends each clip's bytes in the request, as a backend
uploading clips does; `path` sends only the clip's absolute file path (`TagVideoRequest.path`)
and the server reads the file itself, so the upload leaves the measurement. Path mode needs a
server on the same filesystem started with `--allow-path-root DIR` covering the clips, and
clips that come from files (`--clips DIR`, `--synth N`); every report says which input was used.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

import numpy as np

DEFAULT_CACHE: Final = Path("build/bench")
VIDEO_SUFFIXES: Final = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".3gp", ".flv"}
)
DEFAULT_REQUESTS: Final = 50
DEFAULT_DURATION_S: Final = 10.0
MAX_MESSAGE_BYTES: Final = 256 * 1024 * 1024
PERCENTILES: Final = (50, 90, 99)
Mode = Literal["closed", "open"]
InputMode = Literal["bytes", "path"]
INPUT_MODES: Final[tuple[InputMode, ...]] = ("bytes", "path")


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Clip:
    """A clip to send: its bytes, and the file they came from (absolute; None for clips given
    only as bytes, which cannot be sent by path)."""

    name: str
    data: bytes
    path: Path | None = None


@dataclass(frozen=True)
class Sample:
    """One request: when it was due and sent (s from step start), how it ended, what it cost."""

    clip: int
    due_s: float
    sent_s: float
    latency_ms: float  # answer time - due time
    status: str  # grpc.StatusCode name; "OK" on success
    server: dict[str, float]  # numeric `Timings` fields of the response (empty on failure)
    tags: tuple[str, ...] = ()  # names of the tags answered, ranked (empty on failure)


@dataclass
class Step:
    """One load level and its samples."""

    mode: Mode
    load: float  # concurrency (closed) or requests/s (open)
    wall_s: float = 0.0
    duration_s: float | None = None  # open loop: the span requests were scheduled over
    samples: list[Sample] = field(default_factory=list)
    input: InputMode = "bytes"  # how each request carried its clip

    @property
    def label(self) -> str:
        return f"closed c={self.load:g}" if self.mode == "closed" else f"open {self.load:g}/s"

    def ok_latencies(self) -> np.ndarray:
        return np.asarray([s.latency_ms for s in self.samples if s.status == "OK"], dtype=float)

    def summary(self) -> dict[str, Any]:
        """Counts, throughput, latency percentiles and mean server split (JSON-ready)."""
        ok = [s for s in self.samples if s.status == "OK"]
        lat = self.ok_latencies()
        errors = Counter(s.status for s in self.samples if s.status != "OK")
        latency: dict[str, float | None] = {f"p{q}": None for q in PERCENTILES}
        latency |= {"max": None, "mean": None}
        if lat.size:
            latency = {f"p{q}": float(np.percentile(lat, q)) for q in PERCENTILES}
            latency |= {"max": float(lat.max()), "mean": float(lat.mean())}
        lag = np.asarray([s.sent_s - s.due_s for s in self.samples], dtype=float) * 1000.0
        return {
            "mode": self.mode,
            "input": self.input,
            "load": self.load,
            "concurrency": int(self.load) if self.mode == "closed" else None,
            "rate": self.load if self.mode == "open" else None,
            "requests": len(self.samples),
            "ok": len(ok),
            "errors": dict(sorted(errors.items())),
            "wall_s": self.wall_s,
            "throughput_clips_s": len(ok) / self.wall_s if self.wall_s > 0 else 0.0,
            # Open loop: the rate the Poisson draw actually offered (requests / duration).
            "offered_rps": len(self.samples) / self.duration_s if self.duration_s else None,
            "latency_ms": latency,
            "server_ms": server_split(ok),
            "send_lag_ms": {
                "p99": float(np.percentile(lag, 99)) if lag.size else None,
                "max": float(lag.max()) if lag.size else None,
            },
        }

    def raw(self) -> dict[str, list[Any]]:
        """Per-request columns, in send order."""
        keys = sorted({k for s in self.samples for k in s.server})
        cols: dict[str, list[Any]] = {
            "clip": [s.clip for s in self.samples],
            "due_s": [round(s.due_s, 6) for s in self.samples],
            "sent_s": [round(s.sent_s, 6) for s in self.samples],
            "latency_ms": [round(s.latency_ms, 3) for s in self.samples],
            "status": [s.status for s in self.samples],
            "tags": [list(s.tags) for s in self.samples],
        }
        for k in keys:
            cols[f"server.{k}"] = [s.server.get(k) for s in self.samples]
        return cols


# Parts of the server's `queue_ms` it reports on their own, as the step line names them.
WAITS = (("decoder", "decode_wait_ms"), ("transfer", "transfer_ms"), ("batch", "batch_wait_ms"))


def server_split(ok: Sequence[Sample]) -> dict[str, float]:
    """Mean server-side stage times (ms) over successful samples: every numeric field seen, plus
    `other_ms` (total - decode - inference) and `e2e_minus_total_ms` (end-to-end - total)."""
    if not ok:
        return {}
    keys = sorted({k for s in ok for k in s.server})
    out = {k: float(np.mean([s.server.get(k, 0.0) for s in ok])) for k in keys}
    if "total_ms" in out:
        out["other_ms"] = out["total_ms"] - out.get("decode_ms", 0.0) - out.get("inference_ms", 0.0)
        out["e2e_minus_total_ms"] = float(
            np.mean([s.latency_ms - s.server.get("total_ms", 0.0) for s in ok])
        )
    return out


def server_timings(response: Any) -> dict[str, float]:
    """The numeric fields of `response.timings` by field name (ms, or counts like `batch_size`).

    Read from the descriptor, so fields added to `Timings` later appear without code changes;
    an `optional` field the server left unset is skipped.
    """
    from google.protobuf.descriptor import FieldDescriptor as FD

    if not response.HasField("timings"):
        return {}
    t = response.timings
    numeric = {
        FD.CPPTYPE_DOUBLE,
        FD.CPPTYPE_FLOAT,
        FD.CPPTYPE_INT32,
        FD.CPPTYPE_INT64,
        FD.CPPTYPE_UINT32,
        FD.CPPTYPE_UINT64,
    }
    out: dict[str, float] = {}
    for f in t.DESCRIPTOR.fields:
        if f.cpp_type not in numeric or getattr(f, "is_repeated", False):
            continue
        if getattr(f, "has_presence", False) and not t.HasField(f.name):
            continue
        out[f.name] = float(getattr(t, f.name))
    return out


def poisson_schedule(rate: float, duration_s: float, seed: int) -> np.ndarray:
    """Send times (s from start) of a Poisson process of `rate`/s over [0, duration_s).

    Exponential inter-arrival times from `numpy.random.default_rng(seed)`; the same seed gives
    the same unit-rate draws, so schedules of different rates are scaled copies of one another.
    """
    if rate <= 0 or duration_s <= 0:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    chunk = max(16, int(rate * duration_s * 1.2) + 16)
    times: list[np.ndarray] = []
    last = 0.0
    while last < duration_s:
        t = last + np.cumsum(rng.exponential(1.0, chunk) / rate)
        times.append(t)
        last = float(t[-1])
    all_t = np.concatenate(times)
    return all_t[all_t < duration_s]


# ---------------------------------------------------------------- clips


def load_clips(directory: Path) -> list[Clip]:
    """Every video file directly in `directory` (by suffix), sorted by name, read into memory."""
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    return [Clip(p.name, p.read_bytes(), p.absolute()) for p in paths if p.is_file()]


def parse_clip_spec(text: str) -> dict[str, Any]:
    """`vidtag.synth` overrides from `key=value,...`, e.g. `size=540x960,codec=h264,gop=4s`.

    Keys are `vidtag.synth.sampling.OVERRIDE_KEYS`; `size` is WIDTHxHEIGHT, `tags` is
    `+`-separated, booleans are true/false.
    """
    from vidtag.synth.sampling import OVERRIDE_KEYS

    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in OVERRIDE_KEYS:
            raise ValueError(
                f"bad --clip-spec item {item!r}: want key=value with key one of "
                f"{', '.join(sorted(OVERRIDE_KEYS))}"
            )
        if key == "size":
            w, _, h = value.lower().partition("x")
            out[key] = (int(w), int(h))
        elif key in ("fps", "crf", "rotation"):
            out[key] = int(value)
        elif key in ("duration", "scale"):
            out[key] = float(value.removesuffix("s"))
        elif key in ("vfr", "audio", "distractors"):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"bad --clip-spec item {item!r}: want true or false")
            out[key] = value.lower() in ("true", "1", "yes")
        elif key == "tags":
            out[key] = [t for t in value.split("+") if t]
        else:
            out[key] = value
    return out


def synth_clips(
    count: int,
    *,
    seed: int,
    overrides: dict[str, Any] | None = None,
    cache: Path = DEFAULT_CACHE,
    progress: bool = True,
) -> list[Clip]:
    """`count` STB-1 test clips from `vidtag.synth`, generated once into a folder under `cache`
    named by seed and overrides, and reused (clip i depends only on seed, i and overrides)."""
    from vidtag.synth import MANIFEST, generate

    key = json.dumps(overrides or {}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    out = cache / f"clips-test-seed{seed}-{digest}"
    rows = _manifest_rows(out / MANIFEST)
    if len(rows) < count or not all((out / r["path"]).is_file() for r in rows[:count]):
        generate(out, count, split="test", seed=seed, progress=progress, overrides=overrides)
        (out / "overrides.json").write_text(key + "\n")
        rows = _manifest_rows(out / MANIFEST)
    files = [(r["path"], (out / r["path"]).absolute()) for r in rows[:count]]
    return [Clip(name, path.read_bytes(), path) for name, path in files]


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- load


@dataclass(frozen=True)
class CallOptions:
    timeout: float | None = 60.0
    model_name: str = ""
    model_version: str = ""
    input: InputMode = "bytes"  # "path": send each clip's file path, not its bytes
    # Separate connections, used in turn: a server of several processes sharing a port
    # (--server-processes) gets connections, not requests, spread over its processes.
    connections: int = 1


def check_input(clips: Sequence[Clip], input: str) -> None:
    """ValueError unless every clip can be sent with `input` ("bytes" or "path")."""
    if input not in INPUT_MODES:
        raise ValueError(f"input must be one of {', '.join(INPUT_MODES)}, not {input!r}")
    if input == "path":
        bare = [c.name for c in clips if c.path is None]
        if bare:
            shown = ", ".join(bare[:3]) + (f" and {len(bare) - 3} more" if len(bare) > 3 else "")
            raise ValueError(
                f"input 'path' names each clip by its file, but {shown} "
                f"{'was' if len(bare) == 1 else 'were'} given as bytes only; use clips read "
                "from files (--clips DIR, --synth N) or input 'bytes'"
            )


class _Runner:
    """grpc.aio channels (`options.connections`, each its own connection) and their stubs,
    used in turn; one `TagVideo` call per `call`. Each request carries the clip's bytes or
    (`options.input == "path"`) its absolute file path."""

    def __init__(self, target: str, clips: Sequence[Clip], options: CallOptions) -> None:
        import grpc

        from vidtag.v1 import tagger_pb2 as pb
        from vidtag.v1 import tagger_pb2_grpc as pb_grpc

        check_input(clips, options.input)
        self._grpc = grpc
        if options.connections < 1:
            raise ValueError(f"connections must be >= 1, not {options.connections}")
        channel_options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        if options.connections > 1:  # channels to one target otherwise share a connection
            channel_options.append(("grpc.use_local_subchannel_pool", 1))
        self.channels = [
            grpc.aio.insecure_channel(target, options=channel_options)
            for _ in range(options.connections)
        ]
        self.channel = self.channels[0]
        self.stubs = [pb_grpc.VideoTaggerStub(ch) for ch in self.channels]
        self._calls = 0
        self.requests = []
        for c in clips:
            request = pb.TagVideoRequest(
                model_name=options.model_name, model_version=options.model_version
            )
            if options.input == "path":
                request.path = str(c.path)
            else:
                request.video = c.data
            self.requests.append(request)
        self.options = options

    async def call(self, clip: int) -> tuple[str, dict[str, float], tuple[str, ...]]:
        """(status name, server timings, tag names) of one request for clip `clip`."""
        stub = self.stubs[self._calls % len(self.stubs)]
        self._calls += 1
        try:
            response = await stub.TagVideo(
                self.requests[clip % len(self.requests)], timeout=self.options.timeout
            )
        except self._grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            return (code.name if code is not None else type(exc).__name__), {}, ()
        return "OK", server_timings(response), tuple(t.name for t in response.tags)

    async def health(self, wait_s: float) -> str:
        """The overall health status name, retrying until SERVING or `wait_s` has passed."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        end = time.monotonic() + wait_s
        status = "UNREACHABLE"
        while True:
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
            except self._grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                status = code.name if code is not None else "UNREACHABLE"
            if status == "SERVING" or time.monotonic() >= end:
                return str(status)
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def _bar(total: int | None, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    # disable=None: tqdm draws only on a terminal, so logs (e.g. `make bench > log`) stay clean.
    return tqdm(total=total, desc=desc, unit="req", disable=None if progress else True, leave=False)


async def _closed_loop(
    runner: _Runner,
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    progress: bool = False,
    desc: str = "",
) -> Step:
    step = Step("closed", float(concurrency), input=runner.options.input)
    bar = _bar(requests, desc or step.label, progress)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    end = None if duration_s is None else t0 + duration_s
    counter = iter(range(requests if requests is not None else sys.maxsize))
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            now = loop.time()
            if end is not None and now >= end:
                return
            status, timings, tags = await runner.call(i)
            done = loop.time()
            step.samples.append(
                Sample(i, now - t0, now - t0, (done - now) * 1000.0, status, timings, tags)
            )
            errors += status != "OK"
            bar.set_postfix(errors=errors, refresh=False)
            bar.update()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    step.wall_s = loop.time() - t0
    bar.close()
    step.samples.sort(key=lambda s: s.sent_s)
    return step


async def _open_loop(
    runner: _Runner, rate: float, duration_s: float, seed: int, progress: bool = False
) -> Step:
    step = Step("open", rate, duration_s=duration_s, input=runner.options.input)
    schedule = poisson_schedule(rate, duration_s, seed)
    bar = _bar(len(schedule), step.label, progress)
    loop = asyncio.get_running_loop()
    errors = 0
    t0 = loop.time()

    async def one(i: int, due: float) -> None:
        nonlocal errors
        sent = loop.time()
        status, timings, tags = await runner.call(i)
        done = loop.time()
        # Latency from the scheduled time: a send the client itself delayed still counts.
        lat = (done - due) * 1000.0
        step.samples.append(Sample(i, due - t0, sent - t0, lat, status, timings, tags))
        errors += status != "OK"
        bar.set_postfix(errors=errors, refresh=False)
        bar.update()

    tasks: list[asyncio.Task[None]] = []
    for i, offset in enumerate(schedule):
        due = t0 + float(offset)
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    step.wall_s = max(loop.time() - t0, duration_s)
    bar.close()
    step.samples.sort(key=lambda s: s.due_s)
    return step


@dataclass(frozen=True)
class Plan:
    """What to run: closed-loop concurrencies, then open-loop rates."""

    concurrencies: tuple[int, ...] = ()
    rates: tuple[float, ...] = ()
    requests: int | None = None  # closed loop: measured requests per step
    duration_s: float | None = None  # closed loop without requests; open loop
    warmup: int = 0
    seed: int = 0


async def run_plan(
    target: str,
    clips: Sequence[Clip],
    plan: Plan,
    options: CallOptions | None = None,
    *,
    progress: bool = False,
    on_step: Callable[[Step], None] | None = None,
) -> list[Step]:
    """Run every step of `plan` one after another; `on_step(step)` is called after each."""
    runner = _Runner(target, clips, options or CallOptions())
    steps: list[Step] = []
    try:
        levels: list[tuple[Mode, float]] = [("closed", float(c)) for c in plan.concurrencies]
        levels += [("open", r) for r in plan.rates]
        for mode, load in levels:
            if plan.warmup:
                conc = int(load) if mode == "closed" else 1
                await _closed_loop(runner, conc, plan.warmup, None, progress, "warmup")
            if mode == "closed":
                requests = plan.requests
                duration = plan.duration_s if requests is None else None
                if requests is None and duration is None:
                    requests = DEFAULT_REQUESTS
                step = await _closed_loop(runner, int(load), requests, duration, progress)
            else:
                duration = plan.duration_s if plan.duration_s is not None else DEFAULT_DURATION_S
                step = await _open_loop(runner, load, duration, plan.seed, progress)
            steps.append(step)
            if on_step is not None:
                on_step(step)
    finally:
        await runner.close()
    return steps


# ---------------------------------------------------------------- output


def _ms(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.1f}"


def format_step(summary: dict[str, Any]) -> str:
    """The block printed after each step."""
    s = summary
    label = f"closed c={s['load']:g}" if s["mode"] == "closed" else f"open {s['load']:g}/s"
    lat, srv = s["latency_ms"], s["server_ms"]
    lines = [
        f"{label}: {s['requests']} requests, {s['ok']} ok, "
        f"{s['requests'] - s['ok']} failed in {s['wall_s']:.2f} s; "
        f"{s['throughput_clips_s']:.2f} clips/s"
        + (f" (offered {s['offered_rps']:.2f}/s)" if s["offered_rps"] is not None else "")
        + f"; input {s.get('input', 'bytes')}",
        f"  latency ms   p50 {_ms(lat['p50'])}  p90 {_ms(lat['p90'])}  "
        f"p99 {_ms(lat['p99'])}  max {_ms(lat['max'])}",
    ]
    if srv:
        parts = [
            f"decode {_ms(srv.get('decode_ms'))}",
            f"inference {_ms(srv.get('inference_ms'))}",
            f"other {_ms(srv.get('other_ms'))}",
            f"= total {_ms(srv.get('total_ms'))}",
        ]
        # Fields a server may leave at 0 when it has no queue or batcher: shown when used.
        extra = [f"queue {_ms(srv['queue_ms'])}"] if srv.get("queue_ms", 0.0) > 0 else []
        waits = [
            f"{name} {_ms(srv[key])}"
            for name, key in WAITS
            if srv.get(key, 0.0) > 0  # servers before these fields, or a stage it lacks
        ]
        if extra and waits:
            extra[0] += f" ({', '.join(waits)})"
        if srv.get("preprocess_ms", 0.0) > 0:
            extra.append(f"preprocess {_ms(srv['preprocess_ms'])}")
        if srv.get("batch_size", 0.0) > 0:
            extra.append(f"batch {srv['batch_size']:.2f}")
        if extra:
            parts.append("| " + "  ".join(extra))
        parts.append(f"| e2e - total {_ms(srv.get('e2e_minus_total_ms'))}")
        lines.append("  server mean  " + "  ".join(parts))
    if s["errors"]:
        lines.append("  errors       " + "  ".join(f"{k} {v}" for k, v in s["errors"].items()))
    lag = s["send_lag_ms"]
    if s["mode"] == "open" and lag["max"] is not None and lag["max"] > 50:
        lines.append(f"  note: client sent up to {lag['max']:.0f} ms late (counted in latency)")
    return "\n".join(lines)


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per step: the final sweep table."""
    head = (
        f"{'mode':<6} {'input':<5} {'load':>6} {'reqs':>5} {'ok':>5} {'err':>4} {'clips/s':>8} "
        f"{'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} "
        f"{'decode':>7} {'infer':>7} {'other':>7} {'queue':>7}"
    )
    rows = [head, "-" * len(head)]
    for s in summaries:
        lat, srv = s["latency_ms"], s["server_ms"]
        load = f"{s['load']:g}" + ("/s" if s["mode"] == "open" else "")
        rows.append(
            f"{s['mode']:<6} {s.get('input', 'bytes'):<5} {load:>6} {s['requests']:>5} "
            f"{s['ok']:>5} {s['requests'] - s['ok']:>4} {s['throughput_clips_s']:>8.2f} "
            f"{_ms(lat['p50']):>8} {_ms(lat['p90']):>8} {_ms(lat['p99']):>8} "
            f"{_ms(lat['max']):>8} {_ms(srv.get('decode_ms')):>7} "
            f"{_ms(srv.get('inference_ms')):>7} {_ms(srv.get('other_ms')):>7} "
            f"{_ms(srv.get('queue_ms') or None):>7}"
        )
    return "\n".join(rows)


def build_report(
    steps: Sequence[Step], *, target: str, clips: Sequence[Clip], args: dict[str, Any]
) -> dict[str, Any]:
    """The `--json` document: settings, clips, and per step its summary and raw samples."""
    return {
        "tool": "vidtag bench",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "server": target,
        "input": steps[0].input if steps else args.get("input", "bytes"),
        "args": args,
        "clips": [
            {"name": c.name, "bytes": len(c.data), "path": None if c.path is None else str(c.path)}
            for c in clips
        ],
        "steps": [{**step.summary(), "raw": step.raw()} for step in steps],
    }


def write_png(steps: Sequence[Step], path: Path) -> None:
    """Latency CDF per step; for each mode swept over 2+ levels, p50/p99 latency and achieved
    throughput against offered load. Needs matplotlib (the `bench` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = [m for m in ("closed", "open") if sum(s.mode == m for s in steps) >= 2]
    rows = 1 + len(sweeps)
    fig = plt.figure(figsize=(11.0 if sweeps else 6.5, 4.2 * rows))
    grid = fig.add_gridspec(rows, 2 if sweeps else 1)
    ax = fig.add_subplot(grid[0, :])
    for step in steps:
        lat = np.sort(step.ok_latencies())
        if lat.size:
            ax.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=step.label)
    ax.set_xscale("log")
    ax.set(xlabel="end-to-end latency (ms)", ylabel="fraction of requests", title="latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    if steps:
        ax.legend(fontsize="small")
    for row, mode in enumerate(sweeps, 1):
        chosen = [s.summary() for s in steps if s.mode == mode]
        x = [s["load"] for s in chosen]
        xlabel = "concurrency" if mode == "closed" else "offered load (requests/s)"
        ax_l, ax_t = fig.add_subplot(grid[row, 0]), fig.add_subplot(grid[row, 1])
        for q in ("p50", "p99"):
            y = [np.nan if s["latency_ms"][q] is None else s["latency_ms"][q] for s in chosen]
            ax_l.plot(x, y, marker="o", label=q)
        ax_l.set_yscale("log")
        ax_l.set(xlabel=xlabel, ylabel="latency (ms)", title=f"{mode} loop: latency")
        ax_l.grid(True, which="both", alpha=0.3)
        ax_l.legend(fontsize="small")
        ax_t.plot(x, [s["throughput_clips_s"] for s in chosen], marker="o", label="achieved")
        if mode == "open":
            offered = [s["offered_rps"] for s in chosen]
            ax_t.plot(x, offered, linestyle="--", marker=".", color="grey", label="offered")
        ax_t.set_ylim(bottom=0)
        ax_t.set(xlabel=xlabel, ylabel="successful clips/s", title=f"{mode} loop: throughput")
        ax_t.grid(True, alpha=0.3)
        ax_t.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- CLI


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"want comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"want integers >= 1, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"want comma-separated numbers, got {text!r}") from exc
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"want numbers > 0, got {text!r}")
    return values


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `vidtag bench` arguments to `parser`."""
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="server to load")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--clips", type=Path, metavar="DIR", help="send the video files in DIR, cycled"
    )
    src.add_argument(
        "--synth",
        type=int,
        metavar="N",
        help="send N STB-1 test clips, generated once into --cache-dir and reused",
    )
    parser.add_argument(
        "--clip-spec",
        default="",
        metavar="K=V,...",
        help="with --synth: fix encoding properties, e.g. "
        "duration=30,size=540x960,fps=30,codec=h264,gop=4s,rotation=0,vfr=false",
    )
    parser.add_argument(
        "--synth-seed", type=int, default=2, metavar="S", help="with --synth (default: %(default)s)"
    )
    parser.add_argument(
        "--input",
        choices=INPUT_MODES,
        default="bytes",
        help="bytes: each request carries the clip's bytes (an uploading client); path: each "
        "request names the clip by its absolute file path and the server reads it (a server on "
        "this filesystem started with --allow-path-root covering the clips; no upload in the "
        "measurement) (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        metavar="DIR",
        help="where --synth clips are kept (default: %(default)s)",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="closed loop: N workers, each sending as soon as its last answer came (default: 1)",
    )
    load.add_argument(
        "--sweep",
        type=_int_list,
        default=None,
        metavar="N,N,...",
        help="closed loop at each concurrency in turn",
    )
    load.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="R",
        help="open loop: Poisson arrivals at R requests/s, sent however many are outstanding",
    )
    load.add_argument(
        "--rates", type=_float_list, default=None, metavar="R,R,...", help="open loop at each rate"
    )
    load.add_argument(
        "--requests",
        type=int,
        default=None,
        metavar="M",
        help=f"closed loop: measured requests per step (default: {DEFAULT_REQUESTS} "
        "unless --duration)",
    )
    load.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="seconds per step: open loop always (default: "
        f"{DEFAULT_DURATION_S:g}), closed loop when --requests is not given",
    )
    load.add_argument(
        "--warmup",
        type=int,
        default=2,
        metavar="K",
        help="requests sent before each step and not counted (default: %(default)s)",
    )
    load.add_argument(
        "--seed", type=int, default=0, help="Poisson arrival seed (default: %(default)s)"
    )
    load.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="per-request deadline in seconds (default: %(default)g)",
    )
    load.add_argument(
        "--connections",
        type=int,
        default=1,
        metavar="N",
        help="separate connections, used in turn (a server with --server-processes spreads "
        "connections over its processes; default: %(default)s)",
    )
    load.add_argument("--model-name", default="", metavar="NAME", help="model to ask for")
    load.add_argument("--model-version", default="", metavar="VERSION", help="its version")
    load.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="S",
        help="wait up to S seconds for the server to report SERVING (default: %(default)g)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="JSON report with raw samples (default: build/bench/report-<timestamp>.json)",
    )
    out.add_argument(
        "--png",
        type=Path,
        default=None,
        metavar="PATH",
        help="PNG: latency CDFs, and latency/throughput against load for sweeps "
        "(needs matplotlib: pip install 'vidtag[bench]')",
    )
    out.add_argument("--quiet", action="store_true", help="no progress bars")


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The `Plan` the flags describe; ValueError on contradictory or out-of-range flags."""
    if args.sweep is not None and args.concurrency is not None:
        raise ValueError("give --concurrency or --sweep, not both")
    if args.rates is not None and args.rate is not None:
        raise ValueError("give --rate or --rates, not both")
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    if args.rate is not None and args.rate <= 0:
        raise ValueError("--rate must be > 0")
    if args.requests is not None and args.requests < 1:
        raise ValueError("--requests must be >= 1")
    if args.duration is not None and args.duration <= 0:
        raise ValueError("--duration must be > 0")
    if args.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    rates = args.rates if args.rates is not None else [args.rate] if args.rate else []
    if args.sweep is not None:
        concurrencies = args.sweep
    elif args.concurrency is not None:
        concurrencies = [args.concurrency]
    else:
        concurrencies = [] if rates else [1]
    return Plan(
        concurrencies=tuple(concurrencies),
        rates=tuple(float(r) for r in rates),
        requests=args.requests,
        duration_s=args.duration,
        warmup=args.warmup,
        seed=args.seed,
    )


def run_bench(
    args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    """Run `vidtag bench`: 0 when it ran (request failures are results), 1 when the server is
    not SERVING or no request succeeded, 2 on bad usage."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        plan = plan_from_args(args)
        overrides = parse_clip_spec(args.clip_spec) if args.clip_spec else None
    except ValueError as exc:
        print(f"vidtag bench: {exc}", file=err)
        return 2
    if overrides and args.synth is None:
        print("vidtag bench: --clip-spec only applies to --synth", file=err)
        return 2
    if args.clips is not None:
        if not args.clips.is_dir():
            print(f"vidtag bench: {args.clips} is not a directory", file=err)
            return 2
        clips = load_clips(args.clips)
    else:
        if args.synth < 1:
            print("vidtag bench: --synth must be >= 1", file=err)
            return 2
        clips = synth_clips(
            args.synth,
            seed=args.synth_seed,
            overrides=overrides,
            cache=args.cache_dir,
            progress=not args.quiet and sys.stderr.isatty(),
        )
    if not clips:
        print(f"vidtag bench: no video files in {args.clips}", file=err)
        return 2
    try:
        check_input(clips, args.input)
    except ValueError as exc:
        print(f"vidtag bench: {exc}", file=err)
        return 2
    size_mb = sum(len(c.data) for c in clips) / 1e6
    how = (
        "path (the server reads each clip's file; nothing uploaded)"
        if args.input == "path"
        else "bytes (each clip uploaded in its request)"
    )
    print(
        f"{len(clips)} clip(s), {size_mb:.1f} MB; server {args.server}; input {how}",
        file=out,
        flush=True,
    )

    options = CallOptions(
        args.timeout, args.model_name, args.model_version, args.input, args.connections
    )
    summaries: list[dict[str, Any]] = []

    def on_step(step: Step) -> None:
        summaries.append(step.summary())
        print(format_step(summaries[-1]), file=out, flush=True)

    async def main() -> list[Step] | None:
        runner = _Runner(args.server, clips, options)
        try:
            status = await runner.health(args.wait)
        finally:
            await runner.close()
        if status != "SERVING":
            print(f"vidtag bench: {args.server} is not serving ({status})", file=err)
            return None
        return await run_plan(
            args.server, clips, plan, options, progress=not args.quiet, on_step=on_step
        )

    steps = asyncio.run(main())
    if steps is None:
        return 1
    if len(steps) > 1:
        print("\n" + format_table(summaries), file=out)
    if args.input == "path" and any(
        s["errors"].get("PERMISSION_DENIED") == s["requests"] for s in summaries
    ):
        print(
            "vidtag bench: every path request was refused (PERMISSION_DENIED): is the server "
            "on this filesystem, started with --allow-path-root covering the clips?",
            file=err,
        )

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or DEFAULT_CACHE / f"report-{stamp}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings = {k: v for k, v in settings.items() if not k.startswith("_")}
    report = build_report(steps, target=args.server, clips=clips, args=settings)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"report: {json_path}", file=out)
    if args.png is not None:
        try:
            write_png(steps, args.png)
        except ImportError:
            print(
                "vidtag bench: --png needs matplotlib; install the extra: "
                "pip install 'vidtag[bench]' (skipped the plot)",
                file=err,
            )
        else:
            print(f"plot: {args.png}", file=out)
    return 0 if any(s["ok"] for s in summaries) else 1
