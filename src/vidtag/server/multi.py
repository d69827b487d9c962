"""Serving from several processes on one port (`vidtag serve --server-processes N`).

One server process answers a few hundred requests a second whatever the machine: its event
loop runs gRPC, the decode pool's messages, batching and the responses under one GIL (one
H100, 16 NVDEC decoders: ~260 clips/s by path, the decoders idle half the time). The
supervisor here starts N servers, each a spawned process with its own event loop, model,
batcher and decoders (`workers` and `nvdec_workers` split between them), bound to the same
port with SO_REUSEPORT: the kernel spreads connections, not requests, over them, so clients
that open several channels (a load balancer, `vidtag bench --connections N`) use them all. Each
server binds only once its models are loaded and warm, so no connection reaches one that
cannot answer yet (port 0: the supervisor holds a free port, bound but not listening, until
they do).

The servers' metrics are merged on the supervisor's metrics port, every sample labelled
`server="<i>"` (each server listens for them on a loopback port of its own). SIGTERM or SIGINT
goes to every server as SIGTERM (each drains for `grace_s`; a second signal kills them); a
server that exits ends the others and the supervisor, with its exit status. A server whose
supervisor is gone stops.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from vidtag.server.config import ServeConfig

log = logging.getLogger(__name__)
STOP_MARGIN_S = 15.0  # after grace_s, for a server's shutdown itself


def server_config(config: ServeConfig, index: int, port: int) -> ServeConfig:
    """Server `index`'s share of `config`: one process, `port`, its part of the decoders, and
    metrics on a loopback port of its own (merged by the supervisor)."""
    n = config.server_processes
    return replace(
        config,
        server_processes=1,
        port=port,
        workers=math.ceil(config.workers / n),
        nvdec_workers=math.ceil(config.resolved_nvdec_workers / n),
        upload_spool_bytes=math.ceil(config.upload_spool_bytes / n),
        metrics_port=0 if config.metrics_port is not None else None,
        metrics_host="127.0.0.1",
    )


def _watch_parent(parent: int) -> None:
    """Stop this server (SIGTERM to itself) once its supervisor has gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _server_main(config: ServeConfig, index: int, conn: Connection, parent: int) -> None:
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only, which forwards it once
    logging.basicConfig(level=config.log_level, format=f"%(asctime)s [server {index}] "
                        "%(levelname)s %(name)s %(message)s")  # fmt: skip
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    from vidtag.server.cli import serve_exit_code

    def listening(port: int, metrics_port: int | None) -> None:
        conn.send((port, metrics_port))

    raise SystemExit(serve_exit_code(config, on_listening=listening, bind_when_ready=True))


class MergedMetrics:
    """A collector that reads each server's /metrics and yields its samples labelled
    `server="<i>"`, one family per name across servers."""

    def __init__(self) -> None:
        self.urls: dict[int, str] = {}

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, url in sorted(self.urls.items()):
            try:
                with urllib.request.urlopen(url, timeout=2.0) as r:
                    text = r.read().decode()
            except OSError:
                continue  # a server stopping or restarting: absent from this scrape
            for family in text_string_to_metric_families(text):
                out = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "server": str(index)}, s.value, s.timestamp)
        yield from merged.values()


class Supervisor:
    """Starts `config.server_processes` servers and waits until they are told to stop."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.ctx = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []
        self.metrics = MergedMetrics()
        self._stopping = False
        self._deadline = 0.0
        self._http: Any = None

    def _spawn(self, index: int, port: int) -> Connection:
        """Start server `index` on `port`; the pipe it reports (port, metrics port) on once it
        listens, which it does only when its models are loaded."""
        parent_end, child_end = self.ctx.Pipe(duplex=False)
        cfg = server_config(self.config, index, port)
        p = self.ctx.Process(
            target=_server_main,
            args=(cfg, index, child_end, os.getpid()),
            name=f"vidtag-server-{index}",
        )
        p.start()
        child_end.close()
        self.processes.append(p)
        return parent_end

    def _listening(self, index: int, conn: Connection) -> int:
        """Wait for server `index` to listen; its bound port (0: it exited first)."""
        p = self.processes[index]
        if conn not in wait([conn, p.sentinel]):
            return 0
        try:
            bound, metrics_port = conn.recv()
        except EOFError:
            return 0
        if metrics_port is not None:
            self.metrics.urls[index] = f"http://127.0.0.1:{metrics_port}/metrics"
        log.info("server %d listening on %s:%d", index, self.config.host, bound)
        return int(bound)

    def _signal(self, signum: int, frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        if self._stopping:  # a second signal: kill instead of waiting out the grace
            for p in self.processes:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(p.pid, signal.SIGKILL)
        self._stop()

    def _stop(self) -> None:
        """SIGTERM to every server, once; each drains for grace_s."""
        if self._stopping:
            return
        self._stopping = True
        self._deadline = time.monotonic() + self.config.grace_s + STOP_MARGIN_S
        log.info("stopping %d server(s)", len(self.processes))
        for p in self.processes:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(p.pid, signal.SIGTERM)

    def run(self) -> int:
        """Serve until signalled; the exit status (a failed server's, if one failed)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._signal)
        cfg = self.config
        if cfg.metrics_port is not None:
            registry = CollectorRegistry()
            registry.register(self.metrics)
            self._http, _ = start_http_server(cfg.metrics_port, cfg.metrics_host, registry)
            log.info("merged metrics on http://%s:%d/metrics", cfg.metrics_host,
                     self._http.server_port)  # fmt: skip
        # Port 0: a free port is held (bound, not listening) until the servers listen on it.
        held = reserve_port(cfg.host) if cfg.port == 0 else None
        if cfg.port == 0 and held is None:
            log.error("--server-processes: no free port on --host %s to share", cfg.host)
            return 2
        port = held.getsockname()[1] if held is not None else cfg.port
        try:
            pipes = [self._spawn(i, port) for i in range(cfg.server_processes)]
            for index, conn in enumerate(pipes):
                if self._stopping or not self._listening(index, conn):
                    break
        finally:
            if held is not None:
                held.close()
        status = self._wait()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        return status

    def _wait(self) -> int:
        """Until every server has exited: the first unasked exit stops the others; servers
        still running STOP_MARGIN_S after their grace are killed."""
        status = 0
        alive = list(self.processes)
        while alive:
            timeout = max(self._deadline - time.monotonic(), 0.0) if self._stopping else None
            done = wait([p.sentinel for p in alive], timeout)
            if not done:  # past the grace: what is left is killed
                for p in alive:
                    log.error("%s did not stop in time: killing it", p.name)
                    p.kill()
                continue
            for sentinel in done:
                p = next(q for q in alive if q.sentinel == sentinel)
                p.join()
                alive.remove(p)
                code = p.exitcode or 0
                failed = code if code > 0 else 1  # a signal (negative) counts as 1
                if not self._stopping:
                    status = failed
                    log.error("%s exited (status %s): stopping the others", p.name, code)
                    self._stop()
                elif code and not status:
                    status = failed
        return status


def reserve_port(host: str) -> socket.socket | None:
    """A free TCP port on `host`, bound with SO_REUSEPORT (as gRPC binds) and not listening,
    so no connection reaches it; None where it cannot be bound."""
    addr = host.strip("[]")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        if family == socket.AF_INET6:  # dual stack, as gRPC binds [::]
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((addr, 0))
    except (OSError, AttributeError):
        sock.close()
        return None
    return sock


def supervise(config: ServeConfig) -> int:
    """Run `config.server_processes` servers on one port until signalled (blocking)."""
    return Supervisor(config).run()
