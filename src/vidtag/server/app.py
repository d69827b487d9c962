"""The grpc.aio server and its lifecycle.

bind + start (health NOT_SERVING) -> load and warm up the model -> SERVING -> on SIGTERM/SIGINT
NOT_SERVING -> `server.stop(grace)` lets in-flight RPCs finish -> worker threads shut down.
Health goes up before the model loads so that orchestrators see NOT_SERVING, not a refused port.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from vidtag.server.config import ServeConfig
from vidtag.server.metrics import Metrics
from vidtag.server.servicer import SERVICE_NAME, ModelSet, VideoTaggerServicer
from vidtag.v1 import tagger_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from vidtag.runtime.tagger import Tagger

log = logging.getLogger(__name__)

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def load_tagger(config: ServeConfig) -> Tagger:
    """Load (not warm up) the configured model from the configured repository; blocking."""
    from vidtag.decode.limits import DecodeLimits
    from vidtag.runtime.repository import default_repository
    from vidtag.runtime.tagger import Tagger

    repo = config.model_repository if config.model_repository is not None else default_repository()
    return Tagger.from_repository(
        repo,
        config.model_name,
        config.model_version,
        # A video the transport accepted must not then fail the decoder's own size check.
        limits=DecodeLimits(max_bytes=max(config.max_receive_bytes, config.max_stream_bytes)),
        threads=config.inference_threads,
    )


class VidtagServer:
    """One vidtag gRPC server. `start()` serves NOT_SERVING, `load_models()` makes it SERVING.

    `serve()` does both and waits for a signal; tests drive the steps one by one.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.models = ModelSet()
        self.executor = ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix="vidtag-worker"
        )
        self.metrics = Metrics()
        self.metrics_port: int | None = None
        self.servicer = VideoTaggerServicer(
            self.models, self.executor, config.max_stream_bytes, self.metrics
        )
        self.health = health_aio.HealthServicer()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        """Bind and start serving with health NOT_SERVING; return the bound port."""
        cfg = self.config
        # The stock health servicer starts the overall service "" as SERVING: correct that first.
        for service in ("", SERVICE_NAME):
            await self.health.set(service, _NOT_SERVING)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_receive_bytes),
                ("grpc.max_send_message_length", cfg.max_send_bytes),
            ],
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
        )
        pb_grpc.add_VideoTaggerServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = server.add_insecure_port(cfg.address)
        if port == 0:
            raise OSError(f"could not bind {cfg.address}")
        await server.start()
        self._server, self.port = server, port
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
            log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, self.metrics_port)
        log.info("listening on %s:%d (NOT_SERVING until the model is warm)", cfg.host, port)
        return port

    async def load_models(self) -> None:
        """Load and warm up the configured model off the event loop, then report SERVING."""
        loop = asyncio.get_running_loop()
        tagger = await loop.run_in_executor(self.executor, load_tagger, self.config)
        await loop.run_in_executor(self.executor, tagger.warmup)
        self.models.add(tagger, default=True)
        self.metrics.set_models(
            [(t.name, t.version, t.meta.arch, t is self.models.get()) for t in self.models.all()]
        )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, _SERVING)
        log.info("model %s/%s loaded and warm: SERVING", tagger.name, tagger.version)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, then let in-flight RPCs finish for up to `grace` seconds; idempotent."""
        if self._stopped.is_set():
            return
        grace = self.config.grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        log.info(
            "shutting down: NOT_SERVING, %d request(s) in flight, grace %.1f s",
            self.servicer.in_flight,
            grace,
        )
        if self._server is not None:
            await self._server.stop(grace)
        # Requests still queued were cancelled with their RPCs; do not wait on running decodes.
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()
        self._stopped.set()
        log.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def serve(self) -> None:
        """Start, load, serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()

        def on_signal(signum: int) -> None:
            log.info("received %s", signal.Signals(signum).name)
            stop_requested.set()
            # A second signal gets the default behaviour: kill instead of waiting out the grace.
            for s in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(s)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await self.start()
            loader = asyncio.create_task(self.load_models())
            waiter = asyncio.create_task(stop_requested.wait())
            done, _ = await asyncio.wait({loader, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if loader in done:
                loader.result()  # a model that fails to load ends the process with its error
                await waiter
            else:
                loader.cancel()
            await self.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop(0)


def serve(config: ServeConfig) -> None:
    """Run a server in a fresh event loop until it is signalled to stop (blocking)."""
    asyncio.run(VidtagServer(config).serve())
