"""Soak and overload run against a fresh `vidtag serve` (`make soak`; on demand, not a test).

Starts the server as a subprocess on a free port (bundled default model unless --models; log in
<out>/server.log), then, with the load generator of `vidtag bench`:

1. saturation: closed loop at rising concurrency (1, 2, 4, ...) until throughput stops rising
   by 5 %; saturation is the best throughput seen (clips/s);
2. soak: open-loop Poisson arrivals at 70 % of saturation for --minutes (default 10), sampling
   the RSS of the server's process tree (server + decode workers) every --rss-every seconds;
   pass: zero failed requests and RSS growth below 10 % (median of the last minute over the
   median of the second: the first is warm-up; quarters of the phase when it is shorter);
3. overload: 3x saturation for --overload-s (default 60): pass: the server sheds load with
   RESOURCE_EXHAUSTED, and every other request succeeds (no other status);
4. recovery: 50 % of saturation for --recovery-s (default 30): pass: zero failures and a p50
   latency within 1.5x of the soak phase's.

Prints one table and writes <out>/soak.json (settings, phases, RSS samples, criteria); exits 0
when every criterion holds, 1 when one fails, 2 when the server does not come up.
`--quick` runs 20 s phases on small clips (a smoke test of the harness, not a soak).

    python benchmarks/soak.py            # the full run, ~14 min plus clip generation
    python benchmarks/soak.py --quick    # ~2 min
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidtag.client.bench import CallOptions, Clip, Plan, Step, parse_clip_spec, run_plan
from vidtag.client.bench import synth_clips as bench_clips

FULL_CLIPS = "duration=30,size=540x960,fps=30,codec=h264,gop=4s,rotation=0,vfr=false,audio=false"
QUICK_CLIPS = "duration=6,size=270x480,fps=30,codec=h264,gop=4s,rotation=0,vfr=false,audio=false"
SOAK_LOAD, OVERLOAD, RECOVERY_LOAD = 0.7, 3.0, 0.5
MAX_RSS_GROWTH = 0.10
RECOVERY_P50_FACTOR = 1.5


# ---------------------------------------------------------------- the server and its memory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parent_map() -> dict[int, int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the server and its decode workers)."""
    parents = _parent_map()
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [c for c, p in parents.items() if p in frontier]
        tree += frontier
    return tree


def rss_by_process(pid: int) -> dict[int, float]:
    """Resident memory (MB, /proc/PID/status VmRSS) of `pid` and each of its descendants."""
    out = {}
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[p] = int(line.split()[1]) / 1024.0
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of the process tree of `pid` (server and decode workers), in MB."""
    return sum(rss_by_process(pid).values())


@contextlib.contextmanager
def serve(out: Path, models: Path | None, extra: Sequence[str]) -> Iterator[tuple[str, int]]:
    """`vidtag serve` on a free port: yields (target, pid) once SERVING; stopped on exit."""
    from vidtag.client.grpc_client import VidtagClient

    port = _free_port()
    cmd = [sys.executable, "-m", "vidtag.cli", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--metrics-port", "-1", "--log-level", "WARNING"]
    if models is not None:
        cmd += ["--models", str(models)]
    cmd += list(extra)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    try:
        with VidtagClient(target, timeout=2) as client:
            for _ in range(600):
                if proc.poll() is not None:
                    raise RuntimeError(f"vidtag serve exited {proc.returncode}; see {log.name}")
                with contextlib.suppress(Exception):
                    if client.health() == "SERVING":
                        break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"vidtag serve did not become SERVING; see {log.name}")
        yield target, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    load: str
    summary: dict[str, Any]
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _p50(step: Step) -> float | None:
    lat = step.ok_latencies()
    return float(statistics.median(lat)) if len(lat) else None


async def _open(target: str, clips: list[Clip], rate: float, seconds: float, seed: int) -> Step:
    plan = Plan(rates=(rate,), duration_s=seconds, seed=seed)
    (step,) = await run_plan(target, clips, plan, CallOptions(timeout=60.0))
    return step


async def saturation(
    target: str, clips: list[Clip], seconds: float, max_concurrency: int
) -> tuple[float, list[dict[str, Any]]]:
    """Best closed-loop throughput (clips/s) over concurrency 1, 2, 4, ... (stops when a level
    adds less than 5 %)."""
    best, levels, c = 0.0, [], 1
    while c <= max_concurrency:
        plan = Plan(concurrencies=(c,), duration_s=seconds, warmup=c)
        (step,) = await run_plan(target, clips, plan, CallOptions(timeout=60.0))
        s = step.summary()
        levels.append(s)
        print(
            f"  closed c={c:<3d} {s['throughput_clips_s']:6.2f} clips/s  "
            f"p50 {_ms(s['latency_ms']['p50'])} ms  errors {sum(s['errors'].values())}",
            flush=True,
        )
        if s["throughput_clips_s"] < best * 1.05:
            break
        best = max(best, s["throughput_clips_s"])
        c *= 2
    return best, levels


Sample = tuple[float, float, dict[int, float]]  # (s from start, tree MB, MB per process)


async def soak(
    target: str, pid: int, clips: list[Clip], rate: float, seconds: float, every: float
) -> tuple[Step, list[Sample]]:
    """Open loop at `rate` for `seconds`, sampling the server tree's RSS every `every` s."""
    samples: list[Sample] = []
    t0 = time.monotonic()

    def sample() -> None:
        per = {p: round(mb, 1) for p, mb in rss_by_process(pid).items()}
        samples.append((round(time.monotonic() - t0, 1), round(sum(per.values()), 1), per))

    task = asyncio.create_task(_open(target, clips, rate, seconds, seed=1))
    while not task.done():
        sample()
        await asyncio.wait({task}, timeout=every)
    sample()
    return task.result(), samples


def rss_growth(samples: Sequence[Sample], seconds: float) -> tuple[float, float, float]:
    """(start MB, end MB, growth). The first window (a minute, at most a quarter of the phase)
    is warm-up: queues, batch shapes and allocator pools reach their working size. Start is
    the median over the second window, end the median over the last one."""
    window = min(60.0, seconds / 4)
    first = [mb for t, mb, _ in samples if window <= t < 2 * window]
    last = [mb for t, mb, _ in samples if t >= seconds - window]
    start = statistics.median(first or [samples[0][1]])
    end = statistics.median(last or [samples[-1][1]])
    return start, end, (end - start) / start if start else 0.0


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _errors(step: Step) -> dict[str, int]:
    return dict(step.summary()["errors"])


async def run(args: argparse.Namespace, target: str, pid: int, clips: list[Clip]) -> list[Phase]:
    phases: list[Phase] = []
    print(f"saturation ({args.sat_s:g} s per level)", flush=True)
    sat, levels = await saturation(target, clips, args.sat_s, args.max_concurrency)
    phases.append(
        Phase(
            "saturation",
            f"closed c=1..{int(levels[-1]['load'])}",
            {"clips_s": sat, "levels": levels},
            {"measured a throughput": sat > 0},
        )
    )
    if sat <= 0:
        return phases

    rate = SOAK_LOAD * sat
    print(f"soak: {rate:.2f} req/s ({SOAK_LOAD:.0%}) for {args.soak_s:g} s", flush=True)
    step, samples = await soak(target, pid, clips, rate, args.soak_s, args.rss_every)
    start, end, growth = rss_growth(samples, args.soak_s)
    s = step.summary()
    errors = _errors(step)
    phases.append(
        Phase(
            "soak",
            f"{rate:.2f}/s ({SOAK_LOAD:.0%})",
            {
                **s,
                "rss_mb": {
                    "start": start,
                    "end": end,
                    "max": max(mb for _, mb, _ in samples),
                    "growth": growth,
                    "samples": samples,
                },
            },
            {
                "zero errors": not errors and s["ok"] > 0,
                f"RSS growth < {MAX_RSS_GROWTH:.0%}": growth < MAX_RSS_GROWTH,
            },
        )
    )
    soak_p50 = _p50(step)

    rate = OVERLOAD * sat
    print(f"overload: {rate:.2f} req/s ({OVERLOAD:g}x) for {args.overload_s:g} s", flush=True)
    step = await _open(target, clips, rate, args.overload_s, seed=2)
    s = step.summary()
    errors = _errors(step)
    others = {k: v for k, v in errors.items() if k != "RESOURCE_EXHAUSTED"}
    phases.append(
        Phase(
            "overload",
            f"{rate:.2f}/s ({OVERLOAD:g}x)",
            s,
            {
                "sheds with RESOURCE_EXHAUSTED": errors.get("RESOURCE_EXHAUSTED", 0) > 0,
                "no other errors": not others,
            },
        )
    )

    rate = RECOVERY_LOAD * sat
    print(f"recovery: {rate:.2f} req/s ({RECOVERY_LOAD:.0%}) for {args.recovery_s:g} s", flush=True)
    step = await _open(target, clips, rate, args.recovery_s, seed=3)
    s = step.summary()
    p50 = _p50(step)
    near = p50 is not None and soak_p50 is not None and p50 <= RECOVERY_P50_FACTOR * soak_p50
    phases.append(
        Phase(
            "recovery",
            f"{rate:.2f}/s ({RECOVERY_LOAD:.0%})",
            {**s, "baseline_p50_ms": soak_p50},
            {
                "zero errors": not _errors(step) and s["ok"] > 0,
                f"p50 <= {RECOVERY_P50_FACTOR:g}x soak p50": near,
            },
        )
    )
    return phases


def table(phases: Sequence[Phase]) -> str:
    head = (
        f"{'phase':<11} {'load':<18} {'reqs':>6} {'ok':>6} {'clips/s':>8} {'p50':>6} "
        f"{'p99':>6}  {'errors':<28} checks"
    )
    rows = [head, "-" * len(head)]
    for ph in phases:
        s = ph.summary
        if ph.name == "saturation":
            rows.append(
                f"{ph.name:<11} {ph.load:<18} {'':>6} {'':>6} {s['clips_s']:8.2f} {'':>6} "
                f"{'':>6}  {'-':<28} "
            )
        else:
            lat = s["latency_ms"]
            errs = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "-"
            rows.append(
                f"{ph.name:<11} {ph.load:<18} {s['requests']:>6} {s['ok']:>6} "
                f"{s['throughput_clips_s']:8.2f} {_ms(lat['p50']):>6} {_ms(lat['p99']):>6}  "
                f"{errs:<28} "
            )
        rows[-1] += "; ".join(f"{k}: {'PASS' if ok else 'FAIL'}" for k, ok in ph.checks.items())
        if ph.name == "soak":
            r = s["rss_mb"]
            rows.append(
                f"{'':<11} server RSS MB: start {r['start']:.0f}, end {r['end']:.0f}, "
                f"max {r['max']:.0f}, growth {r['growth']:+.1%}"
            )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="soak length (default 10)")
    p.add_argument("--overload-s", type=float, default=60.0, help="3x phase (default 60)")
    p.add_argument("--recovery-s", type=float, default=30.0, help="50%% phase (default 30)")
    p.add_argument("--sat-s", type=float, default=20.0, help="s per concurrency level (20)")
    p.add_argument("--max-concurrency", type=int, default=32)
    p.add_argument("--rss-every", type=float, default=5.0, help="s between RSS samples (5)")
    p.add_argument("--quick", action="store_true", help="20 s phases on small clips")
    p.add_argument("--clips", type=int, default=None, help="synthetic clips (8; quick: 4)")
    p.add_argument("--clip-spec", default=None, help="vidtag bench --clip-spec for the clips")
    p.add_argument("--models", type=Path, default=None, help="model repository to serve")
    p.add_argument(
        "--serve-arg", action="append", default=[], help="extra `vidtag serve` flag (repeatable)"
    )
    p.add_argument("--out", type=Path, default=Path("build/soak"), help="log and JSON folder")
    args = p.parse_args(argv)
    if args.quick:
        args.soak_s = args.overload_s = args.recovery_s = 20.0
        args.sat_s, args.rss_every = 5.0, 2.0
    else:
        args.soak_s = 60.0 * args.minutes
    spec = args.clip_spec or (QUICK_CLIPS if args.quick else FULL_CLIPS)
    count = args.clips or (4 if args.quick else 8)
    clips = bench_clips(count, seed=7, overrides=parse_clip_spec(spec), progress=False)
    print(f"{len(clips)} clip(s) ({spec}), {sum(len(c.data) for c in clips) / 1e6:.1f} MB")

    try:
        with serve(args.out, args.models, args.serve_arg) as (target, pid):
            print(f"vidtag serve: {target} (pid {pid}), RSS {tree_rss_mb(pid):.0f} MB", flush=True)
            phases = asyncio.run(run(args, target, pid, clips))
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    print("\n" + table(phases))
    passed = all(ok for ph in phases for ok in ph.checks.values())
    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "clips": {"count": len(clips), "spec": spec},
        "phases": [ph.__dict__ for ph in phases],
        "passed": passed,
        "host": {"cpus": os.cpu_count()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\n{'PASS' if passed else 'FAIL'}; report: {args.out / 'soak.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
