"""Sequential end-to-end latency of `TagVideo` over gRPC on one STB-1 clip.

Starts `vidtag serve` on a free port (bundled default model unless --models), generates a
30 s 540x960 H.264 clip with a keyframe every 4 s, sends it N times one after another and prints
client-side p50/p90/p99/max with the server-side stage split (decode, inference, rest), for
each input: `bytes` (the clip uploaded) and `path` (its file named, read by the decoder).

    python benchmarks/latency.py --requests 50 [--inputs bytes,path] [--decode-shares 2]
        [--upload-spool-mb 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from vidtag.client.grpc_client import VidtagClient
from vidtag.runtime.repository import default_repository, resolve_model
from vidtag.server.background import running_server
from vidtag.server.config import MiB, ServeConfig
from vidtag.synth import generate


def stb1_clip(out: Path, seconds: float) -> Path:
    manifest = generate(
        out,
        1,
        split="test",
        seed=4242,
        workers=1,
        progress=False,
        overrides={
            "duration": seconds,
            "size": (540, 960),
            "fps": 30,
            "codec": "h264",
            "gop": "4s",
            "rotation": 0,
            "vfr": False,
        },
    )
    row = json.loads(manifest.read_text().splitlines()[0])
    return out / row["path"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0, help="clip duration")
    ap.add_argument("--models", default=str(default_repository()))
    ap.add_argument("--clip", help="use this clip instead of generating one")
    ap.add_argument(
        "--decode-threads", type=int, help="decoders per clip while idle (server default if unset)"
    )
    ap.add_argument(
        "--decode-shares", type=int, help="decode processes per clip while idle (server default)"
    )
    ap.add_argument("--workers", type=int, default=2, help="decode processes (default: 2)")
    ap.add_argument(
        "--upload-spool-mb", type=float, help="shared memory for uploads (server default; 0: pipe)"
    )
    ap.add_argument("--inputs", default="bytes,path", help="bytes, path or both (default)")
    args = ap.parse_args()
    inputs = [i.strip() for i in args.inputs.split(",") if i.strip()]
    if not inputs or set(inputs) - {"bytes", "path"}:
        ap.error("--inputs takes bytes, path or bytes,path")

    repo = Path(args.models)
    name = resolve_model(repo).parent.name
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(args.clip) if args.clip else stb1_clip(Path(tmp), args.seconds)
        clip = clip.resolve()
        data = clip.read_bytes()
        config = ServeConfig(
            host="127.0.0.1",
            port=0,
            model_repository=repo,
            model_name=name,
            metrics_port=0,
            workers=args.workers,
            decode_threads=args.decode_threads,
            decode_shares=args.decode_shares,
            allowed_path_roots=(clip.parent,),
        )
        if args.upload_spool_mb is not None:
            config = replace(config, upload_spool_bytes=int(args.upload_spool_mb * MiB))
        print(f"clip: {clip.name} {len(data) / 1e6:.2f} MB, {args.seconds:.0f} s 540x960 h264")
        print(
            f"requests: {args.requests} sequential per input, model {name}, "
            f"{config.workers} decode processes, {config.resolved_decode_threads} decoder "
            f"threads and {config.resolved_decode_shares('pyav')} processes per clip, upload "
            f"spool {config.upload_spool_bytes / MiB:g} MiB"
        )
        with (
            running_server(config) as (server, _),
            VidtagClient(f"127.0.0.1:{server.port}", timeout=30) as client,
        ):
            for how in inputs:
                send = (
                    (lambda: client.tag(data)) if how == "bytes" else lambda: client.tag_path(clip)
                )
                for _ in range(3):  # open the channel, warm the path
                    send()
                lat, stages = [], []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    res = send()
                    lat.append((time.perf_counter() - t0) * 1000)
                    t = res.timings
                    stages.append((t["decode"] * 1000, t["inference"] * 1000, t["total"] * 1000))
                _report(how, np.asarray(lat), np.asarray(stages))


def _report(how: str, lat: np.ndarray, st: np.ndarray) -> None:
    p = {q: float(np.percentile(lat, q)) for q in (50, 90, 99)}
    dec, inf, tot = (float(np.median(st[:, i])) for i in range(3))
    rest = float(np.median(lat - st[:, 0] - st[:, 1]))
    print(
        f"{how:>5}: end-to-end ms p50 {p[50]:.1f}  p90 {p[90]:.1f}  p99 {p[99]:.1f}  "
        f"max {lat.max():.1f} | median decode {dec:.1f}  inference {inf:.1f}  "
        f"server other {tot - dec - inf:.1f}  transport+client+server other {rest:.1f}"
    )


if __name__ == "__main__":
    main()
