"""A private CUDA MPS daemon for one `vidtag serve` (`--cuda-mps on`).

Without MPS every CUDA process (each server process, each NVDEC decode process) has a context
of its own, and the GPU time-slices between them; under MPS their work shares the GPU at once.
One H200, R(2+1)D-18, 4 server processes and 16 NVDEC processes, uploads at concurrency 32:
444 clips/s at p99 130 ms with a daemon, 319 at p99 201 without (the daemon started by
scripts/device_env.sh, not by the server).

The daemon is started with pipe and log directories of its own (a temporary directory), so it
neither needs nor disturbs a system-wide one; the server's child processes find it through
CUDA_MPS_PIPE_DIRECTORY, set in this process's environment before any of them starts and
before this process initialises CUDA. A CUDA process is started under it once before the
server goes on: where that fails (no control binary, the GPU's compute mode, a container that
refuses it), the daemon is stopped and the server runs without MPS, saying why. The server
tells the daemon to quit when it stops; one killed before that leaves it running (its pipe
directory is logged at start: `echo quit | CUDA_MPS_PIPE_DIRECTORY=<dir>/pipe
nvidia-cuda-mps-control` ends it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

CUDA_MPS: Final = ("off", "on")  # `vidtag serve --cuda-mps`
CONTROL = "nvidia-cuda-mps-control"
# Where the NVIDIA container toolkit mounts the driver's binaries when they are not on PATH.
DRIVER_BIN = Path("/usr/local/nvidia/bin")
PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
LOG_ENV = "CUDA_MPS_LOG_DIRECTORY"
PROBE = "import torch; torch.ones(1, device='cuda').sum().item()"


class MpsUnavailable(RuntimeError):
    """The daemon could not be started or a CUDA process could not run under it."""


@dataclass(frozen=True)
class MpsDaemon:
    control: str
    root: Path  # pipe/ and log/ inside

    def env(self) -> dict[str, str]:
        return {PIPE_ENV: str(self.root / "pipe"), LOG_ENV: str(self.root / "log")}

    def stop(self, timeout_s: float = 10.0) -> None:
        """Tell the daemon to quit (it stops its MPS server), then remove its directories."""
        try:
            subprocess.run(
                [self.control],
                input=b"quit\n",
                env={**os.environ, **self.env()},
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("CUDA MPS: stopping the daemon failed: %s", exc)
        shutil.rmtree(self.root, ignore_errors=True)


def find_control() -> str | None:
    found = shutil.which(CONTROL)
    if found:
        return found
    fallback = DRIVER_BIN / CONTROL
    return str(fallback) if os.access(fallback, os.X_OK) else None


def _tail(output: bytes) -> str:
    lines = output.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"


def start_mps(
    control: str | None = None, probe: Sequence[str] | None = None, timeout_s: float = 120.0
) -> MpsDaemon:
    """Start a daemon in a new temporary directory and run `probe` (a CUDA process: torch's
    first kernel by default) under it; raise MpsUnavailable, saying why, if either fails."""
    control = control or find_control()
    if control is None:
        raise MpsUnavailable(f"no {CONTROL} on PATH or in {DRIVER_BIN}")
    try:
        root = Path(tempfile.mkdtemp(prefix="vidtag-mps-"))
    except OSError as exc:
        raise MpsUnavailable(f"no temporary directory for its pipes: {exc}") from None
    daemon = MpsDaemon(control, root)
    for path in daemon.env().values():
        os.mkdir(path, 0o700)
    env = {**os.environ, **daemon.env()}
    # Its output goes to a file: the forked daemon may keep what it inherited open, and a pipe
    # would then never reach its end.
    try:
        with open(root / "control.out", "w+b") as out:
            started = subprocess.run(
                [control, "-d"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=30,
                check=False,
            )
            out.seek(0)
            said = out.read()
    except (OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise MpsUnavailable(f"{control} -d: {exc}") from None
    if started.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise MpsUnavailable(f"{control} -d exited {started.returncode}: {_tail(said)}")
    command = list(probe) if probe is not None else [sys.executable, "-c", PROBE]
    try:
        ran = subprocess.run(command, env=env, capture_output=True, timeout=timeout_s, check=False)
        why = None if ran.returncode == 0 else f"exited {ran.returncode}: {_tail(ran.stderr)}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = str(exc)
    if why is not None:
        daemon.stop()
        raise MpsUnavailable(f"a CUDA process failed under it ({why})")
    return daemon


@contextlib.contextmanager
def serving_mps(
    enabled: bool,
    control: str | None = None,
    probe: Sequence[str] | None = None,
    timeout_s: float = 120.0,
) -> Iterator[MpsDaemon | None]:
    """With `enabled`, a private daemon for the duration, its directories in this process's
    environment (inherited by every process started meanwhile); the daemon, or None where
    MPS is off, already served by a daemon named in the environment, or could not start
    (logged)."""
    if not enabled:
        yield None
        return
    if os.environ.get(PIPE_ENV):
        log.info("CUDA MPS: using the daemon of %s=%s", PIPE_ENV, os.environ[PIPE_ENV])
        yield None
        return
    try:
        daemon = start_mps(control, probe, timeout_s)
    except MpsUnavailable as exc:
        log.warning("CUDA MPS: off, serving without it: %s", exc)
        yield None
        return
    log.info("CUDA MPS: on (%s, pipes in %s)", daemon.control, daemon.root)
    os.environ.update(daemon.env())
    try:
        yield daemon
    finally:
        for name in daemon.env():
            os.environ.pop(name, None)
        daemon.stop()
