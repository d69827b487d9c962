"""What the decode pool adds to a decode: round trip to a worker process minus the decode itself,
for an upload through the pipe, an upload through the shared-memory spool, and a file the
worker opens (FileRef, the server's path inputs). One worker per way, used in turn.

    python benchmarks/pool_roundtrip.py [--clip FILE] [--requests 35] [--backend pyav]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np
from gpu import bar_clips, encode

from vidtag.decode import DecodeLimits
from vidtag.decode.source import FileRef, Input
from vidtag.runtime.artifact import load_meta
from vidtag.runtime.repository import default_repository, resolve_model
from vidtag.server.decode_pool import DecodePool, DecodePoolConfig


async def _measure(clip: Path, requests: int, backend: str) -> None:
    data = clip.read_bytes()
    info = clip.stat()
    ref = FileRef(str(clip), info.st_dev, info.st_ino, info.st_size)
    spec = load_meta(resolve_model(default_repository())).sampling_spec()
    limits = DecodeLimits()
    ways: dict[str, tuple[int, Input]] = {
        "upload, pipe": (0, data),
        "upload, spool": (256 << 20, data),
        "file (FileRef)": (0, ref),
    }
    pools = {}
    for name, (spool, _) in ways.items():
        pools[name] = DecodePool(DecodePoolConfig(workers=1, backend=backend, spool_bytes=spool))
        await pools[name].start()
    extra: dict[str, list[float]] = {name: [] for name in ways}
    decode: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for i in range(requests + 3):  # interleaved, so the machine's moods hit every way
            for name, (_, source) in ways.items():
                t0 = time.perf_counter()
                clip_out = (await pools[name].decode(source, spec, limits)).clip
                wall = time.perf_counter() - t0
                if i >= 3:  # warm-up
                    extra[name].append((wall - clip_out.seconds) * 1000)
                    decode[name].append(clip_out.seconds * 1000)
    finally:
        for p in pools.values():
            await p.stop()
    print(f"{clip.name}: {len(data) / 1e6:.2f} MB, {backend}, {requests} requests per way")
    for name in ways:
        x = np.asarray(extra[name])
        print(
            f"  {name:<15} beyond the decode: median {np.median(x):.2f} ms, p90 "
            f"{np.percentile(x, 90):.2f} | decode median {np.median(decode[name]):.1f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, help="a video file (default: the GPU bar's clip, ~3.7 MB)")
    ap.add_argument("--requests", type=int, default=35)
    ap.add_argument("--backend", default="pyav", help="the workers' decode backend")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = args.clip.resolve() if args.clip else Path(tmp) / "bar.mp4"
        if args.clip is None:  # the GPU bar's clip: 30 s 540x960 H.264, keyframe every 4 s
            encode(bar_clips((540, 960), 30, 1)[0], clip)
        asyncio.run(_measure(clip, args.requests, args.backend))


if __name__ == "__main__":
    main()
