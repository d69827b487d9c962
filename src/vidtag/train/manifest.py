"""JSONL manifests: one clip per line with at least `path` and `tags` (names)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Clip:
    path: Path
    tags: tuple[str, ...]


def clip_path(manifest: str | Path, path: str) -> Path:
    """A manifest row's clip path: relative paths are taken from the manifest's folder."""
    p = Path(path)
    return p if p.is_absolute() else Path(manifest).parent / p


def read_manifest(path: str | Path) -> list[Clip]:
    """Clips of a JSONL manifest; relative paths are taken from the manifest's folder."""
    p = Path(path)
    clips = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            where = clip_path(p, row["path"])
            tags = tuple(row["tags"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{p}:{n}: bad manifest line: {exc}") from exc
        clips.append(Clip(where, tags))
    return clips


def multi_hot(clips: list[Clip], tags: tuple[str, ...]) -> np.ndarray:
    index = {t: i for i, t in enumerate(tags)}
    y = np.zeros((len(clips), len(tags)), dtype=np.float32)
    for r, c in enumerate(clips):
        for t in c.tags:
            if t not in index:
                raise ValueError(f"{c.path}: unknown tag {t!r}")
            y[r, index[t]] = 1.0
    return y
