"""Sequential end-to-end latency of `TagVideo` over gRPC on one STB-1 clip.

Starts `vidtag serve` on a free port (bundled default model unless --models), generates a
30 s 540x960 H.264 clip with a keyframe every 4 s, sends it N times one after another and prints
client-side p50/p90/p99/max with the server-side stage split (decode, inference, rest).

    python benchmarks/latency.py --requests 50
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from vidtag.client.grpc_client import VidtagClient
from vidtag.runtime.repository import default_repository, resolve_model
from vidtag.server.background import running_server
from vidtag.server.config import ServeConfig
from vidtag.synth import generate


def _clip(out: Path, seconds: float) -> Path:
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
    args = ap.parse_args()

    repo = Path(args.models)
    name = resolve_model(repo).parent.name
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(args.clip) if args.clip else _clip(Path(tmp), args.seconds)
        data = clip.read_bytes()
        config = ServeConfig(
            host="127.0.0.1",
            port=0,
            model_repository=repo,
            model_name=name,
            metrics_port=0,
            decode_threads=args.decode_threads,
        )
        lat, stages = [], []
        with (
            running_server(config) as (server, _),
            VidtagClient(f"127.0.0.1:{server.port}", timeout=30) as client,
        ):
            client.tag(data)  # one request to open the channel
            for _ in range(args.requests):
                t0 = time.perf_counter()
                res = client.tag(data)
                lat.append((time.perf_counter() - t0) * 1000)
                stages.append(
                    (
                        res.timings["decode"] * 1000,
                        res.timings["inference"] * 1000,
                        res.timings["total"] * 1000,
                    )
                )
    lat_a = np.asarray(lat)
    st = np.asarray(stages)
    p = {q: float(np.percentile(lat_a, q)) for q in (50, 90, 99)}
    print(f"clip: {clip.name} {len(data) / 1e6:.2f} MB, {args.seconds:.0f} s 540x960 h264 gop 4s")
    print(
        f"requests: {args.requests} sequential, model {name}, "
        f"{config.resolved_decode_threads} decoders per clip"
    )
    print(
        f"end-to-end ms: p50 {p[50]:.1f}  p90 {p[90]:.1f}  p99 {p[99]:.1f}  max {lat_a.max():.1f}"
    )
    dec, inf, tot = (float(np.median(st[:, i])) for i in range(3))
    rest = float(np.median(lat_a - st[:, 0] - st[:, 1]))
    print(
        f"median split ms: decode {dec:.1f}  inference {inf:.1f}  "
        f"server other {tot - dec - inf:.1f}  transport+client+server other {rest:.1f}"
    )


if __name__ == "__main__":
    main()
