"""Object masks for the cached clips of an STB-1 manifest, from the generator, not from pixels.

An STB-1 manifest row names the (split, seed, index) its clip was generated from, and the
generator is deterministic, so the renderer can say where every object was at each timestamp
the decoder returned (times.npy of the frame cache): the per-kind coverage of each cell of
the network's object-map grid, the dense supervision `--aux-masks` trains with (~7 ms a clip).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vidtag.synth.generate import clip_spec, manifest_row
from vidtag.synth.matrix import ENCODING_KEYS
from vidtag.synth.render import Renderer
from vidtag.synth.spec import ClipSpec
from vidtag.tags import TAG_GROUPS
from vidtag.train.manifest import clip_path

OBJECTS: tuple[str, ...] = tuple(TAG_GROUPS["object"])


def _synth_rows(manifest: str | Path) -> dict[str, dict[str, Any]]:
    """Manifest rows by resolved clip path (as the cache's clips.jsonl writes them)."""
    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines() if line.strip()]
    return {str(clip_path(manifest, row["path"])): row for row in rows}


def clip_masks(row: dict[str, Any], times: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(T, len(OBJECTS), h, w) uint8 coverage (255 = covered) of the STB-1 clip of a manifest
    `row` at `times` (s) on a `grid` = (w, h). ValueError when the row is no STB-1 clip or the
    generator no longer makes the clip it names."""
    return render_masks(Renderer(synth_spec(row)), times, grid)


def synth_spec(row: dict[str, Any]) -> ClipSpec:
    """The spec an STB-1 manifest row was generated from: its (split, seed, index) with the
    row's encoding as overrides (`vidtag synth` may have forced some), checked by making the
    row again. Overrides of tags, scale or distractors leave no trace in a row and fail."""
    try:
        split, seed, index = str(row["split"]), int(row["seed"]), int(row["index"])
        encoding = {k: row[k] for k in ENCODING_KEYS - {"size"}}
        encoding["size"] = (int(row["width"]), int(row["height"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{row.get('path')}: not an STB-1 manifest row ({exc})") from exc
    spec = clip_spec(split, seed, index, encoding)
    again = manifest_row(spec)
    if (
        any(again[k] != row[k] for k in again if k != "path")
        or spec.filename != Path(row["path"]).name
    ):
        raise ValueError(
            f"{row['path']}: ({split}, {seed}, {index}) now makes {again}; synthesised by "
            "another version, or with tags/scale/distractors forced?"
        )
    return spec


def render_masks(renderer: Renderer, times: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(T, len(OBJECTS), h, w) uint8 coverage of the frames `renderer` shows at `times`."""
    shown = [renderer.frame_at(float(t)) for t in times]
    cover = np.stack([renderer.object_masks(i, OBJECTS, grid) for i in shown])
    return np.rint(cover * 255).astype(np.uint8)


def cache_masks(cache: str | Path, manifest: str | Path, grid: tuple[int, int]) -> np.ndarray:
    """(N, T, len(OBJECTS), h, w) uint8 masks of every clip in a frame cache built from
    `manifest`, computed once and kept as masks-<w>x<h>.npy beside its frames."""
    out = Path(cache)
    path = out / f"masks-{grid[0]}x{grid[1]}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    if not (out / "times.npy").is_file():
        raise ValueError(f"{out}: a frame cache without times.npy (built by an older vidtag)")
    times = np.load(out / "times.npy")
    clips = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
    rows = _synth_rows(manifest)
    masks = np.stack(
        [clip_masks(rows[c["path"]], t, grid) for c, t in zip(clips, times, strict=True)]
    )
    np.save(out / "masks.tmp.npy", masks)
    (out / "masks.tmp.npy").replace(path)
    return masks
