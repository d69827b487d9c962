"""Orchestration: one job per clip in a spawn-context process pool, then the manifest.

Callers that run `generate` with workers > 1 from a script need the usual
`if __name__ == "__main__":` guard (spawned workers re-import the main module)."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vidtag.synth.sampling import sample_clip
from vidtag.synth.spec import SPLIT_CODES, ClipSpec

MANIFEST = "manifest.jsonl"
PARTIAL = "manifest.partial.jsonl"


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
    time_limit_s: float = 0.0,
) -> Path:
    """Render+encode `count` labelled clips into out_dir; write out_dir/manifest.jsonl; return
    its path. Rows are in index order whatever the worker scheduling.

    With `time_limit_s` > 0 no clip is started after that many seconds: the clips in progress
    are finished and the manifest lists those written (a time-boxed split on a budgeted machine).
    Each finished row is also appended to manifest.partial.jsonl at once, so another process can
    start on the clips written so far.
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, not {split!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), split, seed, i, overrides) for i in range(count)]
    n_workers = max(1, min(workers or os.cpu_count() or 1, count))
    deadline = time.monotonic() + time_limit_s if time_limit_s > 0 else math.inf
    bar = tqdm(total=count, disable=not progress, desc=f"stb1 {split}", unit="clip")
    rows: list[dict[str, Any]] = []
    partial = (out / PARTIAL).open("w")

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        partial.write(json.dumps(row) + "\n")
        partial.flush()
        bar.update()

    try:
        if n_workers == 1:
            _quiet_worker()
            for job in jobs:
                if time.monotonic() >= deadline:
                    break
                done(make_clip(job))
        else:
            _run_pool(jobs, n_workers, deadline, done)
    finally:
        partial.close()
        bar.close()
    rows.sort(key=lambda r: r["index"])
    path = out / MANIFEST
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def _run_pool(
    jobs: list[tuple[str, str, int, int, dict[str, Any] | None]],
    n_workers: int,
    deadline: float,
    done: Callable[[dict[str, Any]], None],
) -> None:
    # spawn, not fork: a child forked after PyAV is imported can hang inside FFmpeg. An
    # executor (unlike multiprocessing.Pool) raises BrokenProcessPool if a worker dies. Jobs are
    # submitted two per worker at a time, so a deadline leaves little queued work to cancel.
    pool = ProcessPoolExecutor(
        n_workers, mp_context=mp.get_context("spawn"), initializer=_quiet_worker
    )
    pending = iter(jobs)
    running: set[Future[dict[str, Any]]] = set()
    try:
        while True:
            while len(running) < 2 * n_workers and time.monotonic() < deadline:
                job = next(pending, None)
                if job is None:
                    break
                running.add(pool.submit(make_clip, job))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
