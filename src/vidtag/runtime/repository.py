"""Model repository layout: `<repo>/<name>/<version>/`, versions compared numerically."""

from __future__ import annotations

import os
from pathlib import Path

from vidtag.errors import ModelError

DEFAULT_MODEL = "stb1"


def default_repository() -> Path:
    """The repository's bundled `models/` directory (or $VIDTAG_MODELS, read at call time)."""
    env = os.environ.get("VIDTAG_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "models"


def version_key(v: str) -> tuple[int, str]:
    """Numeric versions in numeric order, after any non-numeric ones."""
    return (int(v), "") if v.isdigit() else (-1, v)


def list_versions(repo: str | Path, name: str) -> list[str]:
    d = Path(repo) / name
    if not d.is_dir():
        return []
    return sorted((p.name for p in d.iterdir() if p.is_dir()), key=version_key)


def list_model_names(repo: str | Path) -> list[str]:
    r = Path(repo)
    return sorted(p.name for p in r.iterdir() if p.is_dir()) if r.is_dir() else []


def resolve_model(repo: str | Path, name: str | None = None, version: str | None = None) -> Path:
    """Directory of `name`/`version` (default model, latest version); ModelError if absent."""
    name = name or DEFAULT_MODEL
    versions = list_versions(repo, name)
    if not versions:
        raise ModelError(f"model {name!r} not found in {repo}")
    if version:
        if version not in versions:
            raise ModelError(f"model {name!r} has no version {version!r} (have {versions})")
        return Path(repo) / name / version
    return Path(repo) / name / versions[-1]
