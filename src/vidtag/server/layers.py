"""Where ServeConfig values come from: defaults < config file < environment < command-line flags.

Keys are ServeConfig's field names, in its units (bytes, seconds). The file is TOML or JSON (by
suffix), optionally under a `[serve]` table; environment variables are `VIDTAG_<FIELD>` in upper
case (`VIDTAG_MAX_BATCH_SIZE=16`); the literal `none` clears an optional value; a list of paths
is `os.pathsep`-separated there (`VIDTAG_ALLOWED_PATH_ROOTS=/data/a:/data/b`). Unknown keys and
values of the wrong type are errors that name the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vidtag.server.config import ServeConfig

ENV_PREFIX = "VIDTAG_"
_HINTS = typing.get_type_hints(ServeConfig)
FIELDS = {f.name for f in dataclasses.fields(ServeConfig)}


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the non-None type, whether None is allowed) of a field's annotation."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return hint, False


def coerce(name: str, value: Any, origin: str) -> Any:
    """`value` (a string from the environment, or a parsed file value) as field `name`'s type."""
    if name not in FIELDS:
        raise ValueError(f"{origin}: unknown setting {name!r} (known: {', '.join(sorted(FIELDS))})")
    kind, optional = _base_type(_HINTS[name])
    if typing.get_origin(kind) is tuple:  # tuple[Path, ...]: "a:b" in the environment, or a list
        items = value.split(os.pathsep) if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError(f"{origin}: {name}={value!r} is not a list")
        item_kind = typing.get_args(kind)[0]
        return tuple(item_kind(v) for v in items if v != "")
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
        if not optional:
            raise ValueError(f"{origin}: {name} cannot be empty")
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if kind is Path:
            return Path(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{origin}: {name}={value!r} is not a valid {kind.__name__}") from None
    raise ValueError(f"{origin}: {name} has an unsupported type {kind!r}")


def from_file(path: Path) -> dict[str, Any]:
    """Settings in a TOML or JSON file (top level or a `serve` table)."""
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    if isinstance(data.get("serve"), dict):
        data = data["serve"]
    return {k: coerce(k, v, str(path)) for k, v in data.items()}


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings in `VIDTAG_<FIELD>` variables (other VIDTAG_ variables are ignored)."""
    out = {}
    for name in FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env:
            out[name] = coerce(name, env[key], f"${key}")
    return out


def build(
    flags: Mapping[str, Any], env: Mapping[str, str], config_file: Path | None = None
) -> ServeConfig:
    """The config the layers describe; `flags` holds only the flags actually given."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(from_file(config_file))
    values.update(from_env(env))
    values.update({k: coerce(k, v, "flag") for k, v in flags.items()})
    return ServeConfig(**values)
