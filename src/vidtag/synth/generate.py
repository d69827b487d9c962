"""Orchestration: one job per clip in a spawn-context process pool, then the manifest.

Callers that run `generate` with workers > 1 from a script need the usual
`if __name__ == "__main__":` guard (spawned workers re-import the main module)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vidtag.synth.sampling import sample_clip
from vidtag.synth.spec import SPLIT_CODES, ClipSpec

MANIFEST = "manifest.jsonl"


def clip_spec(split: str, seed: int, index: int, overrides: dict[str, Any] | None) -> ClipSpec:
    """Spec of clip `index`; its generator depends only on (seed, index, split)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, not {split!r}")
    rng = np.random.default_rng([seed, index, SPLIT_CODES[split]])
    return sample_clip(rng, split, seed, index, overrides)


def manifest_row(spec: ClipSpec) -> dict[str, Any]:
    """One manifest line; width/height are the display size (after rotation)."""
    enc = spec.encoding
    return {
        "path": spec.filename,
        "tags": list(spec.tags),
        "duration": round(enc.duration, 6),
        "width": enc.width,
        "height": enc.height,
        "fps": enc.fps,
        "vfr": enc.vfr,
        "codec": enc.codec,
        "container": enc.container,
        "gop": enc.gop,
        "crf": enc.crf,
        "rotation": enc.rotation,
        "audio": enc.audio,
        "split": spec.split,
        "seed": spec.seed,
        "index": spec.index,
    }


def make_clip(job: tuple[str, str, int, int, dict[str, Any] | None]) -> dict[str, Any]:
    """Draw, render and encode one clip into job's folder; return its manifest row."""
    # Imported here so that `import vidtag.synth` does not load PyAV.
    from vidtag.synth.encode import write_clip
    from vidtag.synth.render import Renderer

    out_dir, split, seed, index, overrides = job
    spec = clip_spec(split, seed, index, overrides)
    write_clip(Path(out_dir) / spec.filename, Renderer(spec))
    return manifest_row(spec)


def _quiet_worker() -> None:
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
    import av.logging

    av.logging.set_level(av.logging.ERROR)


def generate(
    out_dir: Path,
    count: int,
    split: str = "train",
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Render+encode `count` labelled clips into out_dir; write out_dir/manifest.jsonl; return
    its path. Rows are in index order whatever the worker scheduling."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, not {split!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), split, seed, i, overrides) for i in range(count)]
    n_workers = max(1, min(workers or os.cpu_count() or 1, count))
    bar = tqdm(total=count, disable=not progress, desc=f"stb1 {split}", unit="clip")
    rows: list[dict[str, Any]] = []
    if n_workers == 1:
        _quiet_worker()
        for job in jobs:
            rows.append(make_clip(job))
            bar.update()
    else:
        # spawn, not fork: a child forked after PyAV is imported can hang inside FFmpeg. An
        # executor (unlike multiprocessing.Pool) raises BrokenProcessPool if a worker dies.
        pool = ProcessPoolExecutor(
            n_workers, mp_context=mp.get_context("spawn"), initializer=_quiet_worker
        )
        try:
            for future in as_completed([pool.submit(make_clip, job) for job in jobs]):
                rows.append(future.result())
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    rows.sort(key=lambda r: r["index"])
    path = out / MANIFEST
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
