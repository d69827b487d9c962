"""`vidtag serve --cuda-mps on`: the private MPS daemon's start, probe, environment and stop,
with a stand-in control binary (no GPU here)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vidtag.runtime import mps
from vidtag.runtime.mps import PIPE_ENV, MpsUnavailable, serving_mps, start_mps
from vidtag.server import cli
from vidtag.server.config import ServeConfig

# Records each call and what it read; "-d" makes the control pipe and leaves a process
# behind holding its output, as the daemon does.
FAKE = """#!/bin/sh
echo "args:$*" >> "$FAKE_MPS_LOG"
if [ "$1" = "-d" ]; then
  [ -n "$FAKE_MPS_FAIL" ] && { echo "$FAKE_MPS_FAIL" >&2; exit 1; }
  touch "$CUDA_MPS_PIPE_DIRECTORY/control"
  sleep 5 &  # the daemon: lives on with the output it inherited
  echo "daemon:$!" >> "$FAKE_MPS_LOG"
  exit 0
fi
cat >> "$FAKE_MPS_LOG"
"""
# A "CUDA process": succeeds only if it finds the daemon's pipe through the environment.
PROBE = [
    sys.executable,
    "-c",
    "import os, sys; ok = os.path.exists(os.environ['CUDA_MPS_PIPE_DIRECTORY'] + '/control');"
    " sys.exit(0 if ok else print('no daemon', file=sys.stderr) or 3)",
]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    control = tmp_path / "nvidia-cuda-mps-control"
    control.write_text(FAKE)
    control.chmod(0o755)
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_MPS_LOG", str(calls))
    monkeypatch.delenv(PIPE_ENV, raising=False)
    monkeypatch.delenv("CUDA_MPS_LOG_DIRECTORY", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return str(control), calls


def test_the_daemon_serves_every_process_started_meanwhile(fake: tuple[str, Path]) -> None:
    control, calls = fake
    with serving_mps(True, control=control, probe=PROBE) as daemon:
        assert daemon is not None
        forked = int(calls.read_text().splitlines()[1].removeprefix("daemon:"))
        # Still running: the start did not wait for the daemon's output to close.
        assert Path(f"/proc/{forked}/stat").read_text().split()[2] != "Z"
        pipe = os.environ[PIPE_ENV]
        assert pipe == str(daemon.root / "pipe") and Path(pipe, "control").exists()
        child = subprocess.run(PROBE, check=False)  # a server process started now finds it
        assert child.returncode == 0
    assert PIPE_ENV not in os.environ and "CUDA_MPS_LOG_DIRECTORY" not in os.environ
    assert not daemon.root.exists()
    assert [c for c in calls.read_text().splitlines() if not c.startswith("daemon:")] == [
        "args:-d",
        "args:",
        "quit",
    ]


def test_a_daemon_that_does_not_start_leaves_the_server_without_it(
    fake: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    control, _ = fake
    monkeypatch.setenv("FAKE_MPS_FAIL", "compute mode is exclusive")
    with caplog.at_level(logging.WARNING), serving_mps(True, control=control) as daemon:
        assert daemon is None and PIPE_ENV not in os.environ
    assert "compute mode is exclusive" in caplog.text
    assert os.listdir(tempfile.gettempdir()) == []  # its directories removed


def test_a_cuda_process_failing_under_it_stops_the_daemon(
    fake: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    control, calls = fake
    broken = [sys.executable, "-c", "import sys; sys.exit('CUDA error: MPS client refused')"]
    with pytest.raises(MpsUnavailable, match="MPS client refused"):
        start_mps(control, broken)
    assert calls.read_text().splitlines()[-1] == "quit"
    assert os.listdir(tempfile.gettempdir()) == []
    with caplog.at_level(logging.WARNING), serving_mps(True, control, broken) as daemon:
        assert daemon is None and PIPE_ENV not in os.environ
    assert "serving without it" in caplog.text and "MPS client refused" in caplog.text


def test_no_control_binary_is_said(
    fake: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(mps, "DRIVER_BIN", tmp_path / "driver")
    with pytest.raises(MpsUnavailable, match="no nvidia-cuda-mps-control on PATH"):
        start_mps()


def test_off_or_a_daemon_already_named_starts_nothing(
    fake: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    control, calls = fake
    with serving_mps(False, control=control, probe=PROBE) as daemon:
        assert daemon is None
    monkeypatch.setenv(PIPE_ENV, "/run/site-mps")
    with serving_mps(True, control=control, probe=PROBE) as daemon:
        assert daemon is None and os.environ[PIPE_ENV] == "/run/site-mps"
    assert not calls.exists()


def test_the_setting_takes_off_or_on() -> None:
    assert ServeConfig().cuda_mps == "off"
    assert ServeConfig(cuda_mps="on").cuda_mps == "on"
    with pytest.raises(ValueError, match="cuda_mps must be one of"):
        ServeConfig(cuda_mps="yes")


@pytest.mark.parametrize(
    ("argv", "enabled", "status"),
    [
        (["--cuda-mps", "on", "--device", "cpu"], False, 0),  # off CUDA: ignored
        (["--cuda-mps", "on", "--device", "cuda"], True, 2),  # no CUDA here: refused inside
        (["--device", "cuda"], False, 2),
    ],
)
def test_serve_starts_the_daemon_before_it_checks_the_device(
    argv: list[str], enabled: bool, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []

    @contextlib.contextmanager
    def recording(on: bool) -> Iterator[None]:
        seen.append(on)
        yield None
        seen.append("stopped")

    monkeypatch.setattr(mps, "serving_mps", recording)
    monkeypatch.setattr(cli, "serve_exit_code", lambda config: seen.append("served") or 0)
    parser = argparse.ArgumentParser()
    cli.add_serve_arguments(parser)
    assert cli.run_serve(parser.parse_args(argv)) == status
    assert seen == [enabled, *(["served"] if status == 0 else []), "stopped"]
