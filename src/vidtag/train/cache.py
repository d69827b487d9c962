"""Decode a manifest once through the serving decoder into a frame cache (uint8 .npy files).

Training reads exactly what the server would see for each clip: same decoder, same plan,
same resize. Preprocessing (normalisation) happens later with the shared function.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vidtag.decode import DecodeLimits, SamplingSpec, sample_frames
from vidtag.errors import DatasetError
from vidtag.train.manifest import read_manifest

Decoded = tuple[np.ndarray | None, tuple[float, ...], float, str]


def _decode_one(args: tuple[str, SamplingSpec]) -> Decoded:
    path, spec = args
    try:
        clip = sample_frames(path, spec, DecodeLimits())
        return clip.frames, clip.timestamps, clip.mean_deviation, ""
    except Exception as exc:  # a clip that fails is skipped and reported, not fatal
        return None, (), 0.0, f"{path}: {exc}"


def _imap(jobs: list[tuple[str, SamplingSpec]], workers: int) -> Iterator[Decoded]:
    if workers <= 1:
        yield from map(_decode_one, jobs)
        return
    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_decode_one, jobs, chunksize=4)


def build_cache(
    manifest: str | Path,
    out_dir: str | Path,
    spec: SamplingSpec,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write frames.npy (N, T, H, W, 3) uint8, times.npy (N, T) float64 (the seconds the
    decoder returned), clips.jsonl (path, tags) and spec.json to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # spec.json marks a finished cache: gone until this one is.
    for stale in [*out.glob("masks-*.npy"), out / "spec.json"]:  # masks: from the old frames
        stale.unlink(missing_ok=True)
    clips = read_manifest(manifest)
    n = len(clips)
    frames = np.lib.format.open_memmap(
        out / "frames.npy",
        mode="w+",
        dtype=np.uint8,
        shape=(n, spec.frames, spec.height, spec.width, 3),
    )
    kept: list[int] = []
    times: list[tuple[float, ...]] = []
    errors: list[str] = []
    devs: list[float] = []
    jobs = [(str(c.path), spec) for c in clips]
    it = _imap(jobs, workers or os.cpu_count() or 1)
    for i, (arr, ts, dev, err) in enumerate(tqdm(it, total=n, desc="decode", disable=not progress)):
        if arr is None:
            errors.append(err)
            continue
        frames[len(kept)] = arr
        kept.append(i)
        times.append(ts)
        devs.append(dev)
    frames.flush()
    del frames
    if n and not kept:
        raise DatasetError(
            f"none of the {n} clips of {manifest} could be decoded (paths are relative to the "
            f"manifest's folder); the first: {errors[0]}"
        )
    if len(kept) < n:  # compact: drop the rows of clips that failed
        full = np.load(out / "frames.npy", mmap_mode="r")
        np.save(out / "frames.tmp.npy", np.asarray(full[: len(kept)]))
        del full
        os.replace(out / "frames.tmp.npy", out / "frames.npy")
    np.save(out / "times.npy", np.array(times, dtype=np.float64).reshape(len(kept), spec.frames))
    with (out / "clips.jsonl").open("w") as f:
        for i in kept:
            f.write(json.dumps({"path": str(clips[i].path), "tags": list(clips[i].tags)}) + "\n")
    (out / "spec.json").write_text(
        json.dumps(
            {
                "spec": spec.__dict__,
                "errors": errors,
                "mean_deviation_s": float(np.mean(devs)) if devs else None,
            },
            indent=2,
        )
    )
    return out
