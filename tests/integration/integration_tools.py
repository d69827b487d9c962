"""Helpers of the integration suite: find an external tool (or skip), run it, pick a port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def find_tool(name: str) -> str:
    """The command's path, on PATH or beside this interpreter (console scripts of the venv's
    `integration` extra); skips the test when it is not installed."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.skip(f"{name} is not installed (`make test-integration` installs it)")
    return found


def run_tool(
    argv: Sequence[str], *, stdin: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its text output; never raises on exit status."""
    return subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def yaml_module() -> Any:
    """PyYAML (the `integration` extra), imported when a test needs it so that the default
    suite collects these modules without it; skips the test when it is not installed."""
    return pytest.importorskip("yaml", reason="PyYAML (the integration extra) is not installed")
