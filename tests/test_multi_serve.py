"""`vidtag serve --server-processes N`: N servers on one port, metrics merged with a server
label, SIGTERM drains them all, a server that cannot start ends the supervisor."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vidtag.client.bench import CallOptions, Clip, Plan, run_plan
from vidtag.server.config import ServeConfig
from vidtag.server.multi import reserve_port, server_config

SRC = Path(__file__).resolve().parents[1] / "src"


def test_each_server_gets_its_share() -> None:
    cfg = ServeConfig(port=0, workers=3, server_processes=2, metrics_port=9000)
    one = server_config(cfg, 1, 41234)
    assert (one.server_processes, one.port, one.workers) == (1, 41234, 2)
    assert (one.metrics_port, one.metrics_host) == (0, "127.0.0.1")  # merged by the supervisor
    assert server_config(cfg, 0, 1).nvdec_workers == -(-cfg.resolved_nvdec_workers // 2)
    assert server_config(cfg, 0, 1).upload_spool_bytes == cfg.upload_spool_bytes // 2
    assert (
        server_config(ServeConfig(server_processes=2, metrics_port=None), 0, 1).metrics_port is None
    )
    with pytest.raises(ValueError, match="server_processes"):
        ServeConfig(server_processes=0)


def test_a_held_port_takes_no_connection_until_a_server_listens_on_it() -> None:
    import socket

    held = reserve_port("127.0.0.1")
    assert held is not None
    port = held.getsockname()[1]
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as gRPC binds
        server.bind(("127.0.0.1", port))
        server.listen()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        server.close()
    finally:
        held.close()
    assert reserve_port("[::zz]") is None  # no such address: no port held


def _start(model_repo: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "vidtag.cli", "serve", "--models", str(model_repo)]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--workers", "2", "--repository-poll-s", "0"]
    cmd += ["--grace-s", "2", *extra]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def _read_until(
    proc: subprocess.Popen[str], *patterns: str, timeout: float = 90.0
) -> list[re.Match[str]]:
    """Read the log until every pattern has matched a line; the first match of each."""
    found: dict[str, re.Match[str]] = {}
    lines: list[str] = []
    end = time.monotonic() + timeout
    assert proc.stdout is not None
    while len(found) < len(patterns) and time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        for pattern in patterns:
            m = re.search(pattern, line)
            if m and pattern not in found:
                found[pattern] = m
    missing = [p for p in patterns if p not in found]
    assert not missing, f"{missing} not logged:\n{''.join(lines)}"
    return [found[p] for p in patterns]


def test_two_servers_share_the_port_and_stop_together(model_repo: Path, clip_bytes: bytes) -> None:
    proc = _start(model_repo, "--server-processes", "2", "--metrics-port", "0", "--model", "tiny")
    try:
        metrics, port, port1 = _read_until(
            proc,
            r"merged metrics on http://[^:]+:(\d+)/",
            r"server 0 listening on \S+:(\d+)$",  # each binds once its model is warm
            r"server 1 listening on \S+:(\d+)$",
        )
        assert port.group(1) == port1.group(1)
        # The load generator with 12 connections: the kernel spreads them over the two.
        target = f"127.0.0.1:{port.group(1)}"
        plan = Plan(concurrencies=(4,), requests=24)
        options = CallOptions(timeout=30, connections=12)
        (step,) = asyncio.run(run_plan(target, [Clip("c", clip_bytes)], plan, options))
        assert step.summary()["ok"] == 24
        url = f"http://127.0.0.1:{metrics.group(1)}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        served = {
            m.group(1): float(m.group(2))
            for m in re.finditer(
                r'vidtag_requests_total\{method="TagVideo",server="(\d)",status="OK"\} (\S+)', text
            )
        }
        assert set(served) == {"0", "1"} and all(v > 0 for v in served.values()), served
        assert sum(served.values()) == 24
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert out.count("INFO vidtag.server.app stopped") == 2, out


def test_a_server_that_cannot_start_ends_the_supervisor(model_repo: Path) -> None:
    proc = _start(model_repo, "--server-processes", "2", "--metrics-port", "-1", "--model", "nope")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out  # the server's own status: the model could not be loaded
    assert "cannot load model" in out and "stopping the others" in out
