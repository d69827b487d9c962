"""The hybrid decode router (`gpu_decode.HybridStage`) against two simpler rules, on simulated
decoders: asyncio stand-ins with a fixed decode time and a fixed number of decoders per side
(default: 16 NVDEC processes of 25 ms beside 12 CPU decoders of 55 ms, about the H100 runs'
NVDEC and PyAV decode times of the 30 s 540x960 bar clip). No decoding happens: this measures
the routing rule alone.

Rules: `router` (the stage's own: fastest side with a free decoder, else the side where a
request is expected to finish first), `load` (the side with the least (in flight + 1) /
decoders), `finish` (the side where it is expected to finish first, free decoders or not).
Closed loop at each concurrency, then Poisson arrivals at each rate.

    python benchmarks/hybrid_router.py [--concurrency 16,32,64] [--rates 500,650,820]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vidtag.server.gpu_decode import HybridStage, Route
from vidtag.server.pipeline import Decoded


def simulated(decoders: int, seconds: float) -> Callable[..., Any]:
    """A decode stage of `decoders` decoders that each take `seconds` a request."""
    free = asyncio.Semaphore(decoders)

    async def stage(video: Any, model: Any, deadline: float | None) -> Any:
        async with free:
            await asyncio.sleep(seconds)
        return Decoded(None, None, seconds, 0.0, 0.0, 0.0)  # type: ignore[arg-type]

    return stage


def router(rule: str, sides: list[tuple[str, int, float]]) -> HybridStage:
    stage = HybridStage([Route(name, simulated(n, s), n) for name, n, s in sides])
    routes = stage.routes
    if rule == "load":
        stage.pick = lambda: min(routes, key=Route.load)  # type: ignore[method-assign]
    elif rule == "finish":

        def finish() -> Route:
            if any(r.decode_s is None for r in routes):
                return min(routes, key=Route.load)
            return min(routes, key=lambda r: (r.decode_s or 0.0) * max(1.0, r.load()))

        stage.pick = finish  # type: ignore[method-assign]
    return stage


async def closed(stage: HybridStage, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < end:
            t0 = time.monotonic()
            await stage(b"", None, None)  # type: ignore[arg-type]
            latencies.append(time.monotonic() - t0)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


async def poisson(stage: HybridStage, rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    rng = random.Random(1)

    async def one() -> None:
        t0 = time.monotonic()
        await stage(b"", None, None)  # type: ignore[arg-type]
        latencies.append(time.monotonic() - t0)

    jobs = []
    start = arrival = time.monotonic()
    while arrival < start + seconds:
        while arrival <= time.monotonic():  # every arrival due by now, however late the loop
            jobs.append(asyncio.create_task(one()))
            arrival += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, arrival - time.monotonic()))
    await asyncio.gather(*jobs)
    return latencies


def report(label: str, rule: str, stage: HybridStage, latencies: list[float], s: float) -> None:
    ms = np.asarray(latencies[len(latencies) // 5 :]) * 1000  # the first fifth: warm-up
    print(
        f"  {label:<10} {rule:<7} {len(latencies) / s:6.0f} req/s  p50 {np.median(ms):6.1f}  "
        f"p99 {np.percentile(ms, 99):6.1f} ms  routed {stage.counts()}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="16,32,64")
    ap.add_argument("--rates", default="500,650,820")
    ap.add_argument("--seconds", type=float, default=6.0, help="per step")
    ap.add_argument("--nvdec", default="16x0.025", help="decoders x seconds each")
    ap.add_argument("--cpu", default="12x0.055", help="decoders x seconds each")
    args = ap.parse_args()
    sides = []
    for name, spec in (("nvdec", args.nvdec), ("cpu", args.cpu)):
        n, s = spec.split("x")
        sides.append((name, int(n), float(s)))
    print(f"simulated decoders: {sides}; {args.seconds} s per step")
    rules = ("router", "load", "finish")
    for c in (int(x) for x in args.concurrency.split(",") if x):
        for rule in rules:
            stage = router(rule, sides)
            report(f"c={c}", rule, stage, asyncio.run(closed(stage, c, args.seconds)), args.seconds)
    for rate in (float(x) for x in args.rates.split(",") if x):
        for rule in rules:
            stage = router(rule, sides)
            lat = asyncio.run(poisson(stage, rate, args.seconds))
            report(f"{rate:g}/s", rule, stage, lat, args.seconds)


if __name__ == "__main__":
    main()
