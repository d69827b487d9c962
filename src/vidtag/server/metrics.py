"""Prometheus metrics of one server, in its own registry (several servers can share a process).

Names follow Prometheus conventions: seconds for durations, `_total` for counters. Stages
(`STAGES`, as the proto's Timings): `decode` (bytes -> frames, in a decoder), `preprocess`,
`inference` (the batch's network run), `postprocess`, `queue` (the rest until the inference
results were back) with its measured parts `decode_wait`, `transfer` and `batch_wait`, and
`total` (server-side, request in -> answer out).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# 0.25 ms .. 10 s: the service's budget is ~150 ms, overload can reach seconds, and some steps
# (a worker's transfer, preprocessing) take well under a millisecond.
LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
LAG_EVERY_S = 0.1  # how often the event loop's lag is sampled
# `queue` is the rest of a request's time until its inference results were back; the three
# after it are parts of it measured on their own (see Timings in the proto).
STAGES = (
    "decode", "preprocess", "inference", "postprocess", "queue",
    "decode_wait", "transfer", "batch_wait", "total",
)  # fmt: skip


class Metrics:
    """The server's instruments; `serve(port)` exposes them over HTTP for scraping."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vidtag_requests", "RPCs answered, by method and gRPC status.",
            ["method", "status"], registry=r,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            "vidtag_stage_seconds", "Server-side time per request stage.",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "vidtag_in_flight_requests", "TagVideo RPCs in progress.", registry=r
        )
        self.queue_depth = Gauge(
            "vidtag_queue_depth", "Requests waiting, by queue (decode, batch).", ["queue"],
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "vidtag_batch_size", "Requests per inference batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.decode_shares = Counter(
            "vidtag_decode_shares",
            "Clips decoded, by how many decoders shared each (1: not split; --decode-shares).",
            ["shares"], registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "vidtag_rejected", "Requests shed before any work, by reason.", ["reason"], registry=r
        )
        self.worker_restarts = Gauge(
            "vidtag_decode_worker_restarts",
            "Decode worker processes replaced after a crash or hang (monotonic).",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "vidtag_upload_spool_bytes",
            "Shared memory carrying uploads to decode workers (in use and kept for reuse).",
            registry=r,
        )
        self.loop_lag = Histogram(
            "vidtag_event_loop_lag_seconds",
            f"How late the server's event loop ran a timer (sampled every {LAG_EVERY_S} s): "
            "the time a request that became ready waited for the loop to finish other work.",
            buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_info = Gauge(
            "vidtag_model_info", "Loaded models (value 1), with their identity as labels.",
            ["name", "version", "arch", "default"], registry=r,
        )  # fmt: skip
        for stage in STAGES:  # export every stage from the start, not from its first sample
            self.stage_seconds.labels(stage)
        for queue in ("decode", "batch"):
            self.queue_depth.labels(queue).set(0)
        self._http: Any = None

    def observe_stages(self, seconds: dict[str, float]) -> None:
        for stage in STAGES:
            if stage in seconds:
                self.stage_seconds.labels(stage).observe(max(seconds[stage], 0.0))

    async def watch_loop(self, every_s: float = LAG_EVERY_S) -> None:
        """Observe the running loop's lag every `every_s` seconds, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + every_s
            await asyncio.sleep(every_s)
            self.loop_lag.observe(max(loop.time() - due, 0.0))

    def set_models(self, models: list[tuple[str, str, str, bool]]) -> None:
        """(name, version, arch, is_default) of every loaded model."""
        self.model_info.clear()
        for name, version, arch, default in models:
            self.model_info.labels(name, version, arch, str(default).lower()).set(1)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Expose /metrics on `port` (0: any free port); return the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
