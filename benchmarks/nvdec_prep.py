"""The CPU side of one NVDEC decode, no GPU needed: open + packet index, plan, the planned
access units (Annex B), picture format and rotation, for an upload of a 30 s 540x960 H.264 clip
(keyframe every 4 s) at the default model's sampling. Every NVDEC decoder process pays this per
clip (per share, when a clip is split) before NVDEC sees a byte.

    python benchmarks/nvdec_prep.py [--clip FILE] [--reps 60]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vidtag.decode import DecodeLimits
from vidtag.decode.nvdec_backend import (
    display_rotation,
    picture_format,
    planned_access_units,
    stream_codec,
)
from vidtag.decode.planner import plan_frames
from vidtag.decode.pyav_backend import indexed
from vidtag.runtime.artifact import load_meta
from vidtag.runtime.repository import default_repository, resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, help="an H.264 MP4 instead of the generated one")
    ap.add_argument("--reps", type=int, default=60)
    args = ap.parse_args()
    spec = load_meta(resolve_model(default_repository())).sampling_spec()
    with tempfile.TemporaryDirectory() as tmp:
        clip = args.clip
        if clip is None:
            sys.path.insert(0, str(Path(__file__).parent))
            import gpu

            cfg = gpu.bar_clips((540, 960), 30, 1)[0]
            clip = Path(tmp) / cfg.name
            gpu.encode(cfg, clip)
        data = clip.read_bytes()
        stages = ("open+index", "plan", "access units", "format+rotation", "close")
        times: dict[str, list[float]] = {s: [] for s in (*stages, "total")}
        for _ in range(args.reps + 5):
            t = [time.perf_counter()]
            with indexed(data, DecodeLimits(), light_probe=True) as (src, box, stream, index):
                t.append(time.perf_counter())
                plan = plan_frames(index, spec)
                t.append(time.perf_counter())
                gops = planned_access_units(index, plan, stream)
                t.append(time.perf_counter())
                picture_format(stream, stream_codec(stream), gops)
                display_rotation(src, box, stream, index)
                t.append(time.perf_counter())
            t.append(time.perf_counter())
            for name, a, b in zip(stages, t, t[1:], strict=False):
                times[name].append((b - a) * 1000)
            times["total"].append((t[-1] - t[0]) * 1000)
    print(
        f"{clip.name}: {len(data) / 1e6:.2f} MB, {len(index)} packets, "
        f"{plan.packets_to_decode} planned in {len(plan.prefixes)} GOPs"
    )
    print(
        "median ms ("
        + f"{args.reps} reps): "
        + "  ".join(f"{k} {np.median(v[5:]):.2f}" for k, v in times.items())
    )


if __name__ == "__main__":
    main()
