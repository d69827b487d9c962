"""The grpc.aio server and its lifecycle.

bind + start (health NOT_SERVING) -> load and warm up the model -> SERVING -> on SIGTERM/SIGINT
NOT_SERVING -> `server.stop(grace)` lets in-flight RPCs finish -> worker threads shut down.
Health goes up before the model loads so that orchestrators see NOT_SERVING, not a refused port.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from vidtag.decode.limits import DecodeLimits
from vidtag.decode.spec import SamplingSpec
from vidtag.errors import BackendUnavailable, ModelError
from vidtag.runtime.artifact import load_meta
from vidtag.runtime.device import cuda_index, nvdec_available
from vidtag.runtime.repository import (
    default_repository,
    list_model_names,
    list_versions,
    resolve_model,
)
from vidtag.server.auth import TokenAuthInterceptor, read_tokens
from vidtag.server.batcher import BatcherConfig
from vidtag.server.config import ServeConfig
from vidtag.server.decode_pool import DecodePool, DecodePoolConfig
from vidtag.server.gpu_decode import HybridStage, NvdecStage, Route, example_clips
from vidtag.server.metrics import Metrics
from vidtag.server.paths import PathInputs
from vidtag.server.pipeline import (
    DecodeStage,
    ServedModel,
    pool_decode_stage,
    thread_decode_stage,
)
from vidtag.server.servicer import SERVICE_NAME, ModelSet, VideoTaggerServicer
from vidtag.v1 import tagger_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from vidtag.runtime.tagger import Tagger

log = logging.getLogger(__name__)

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DecoderWarmupError(Exception):
    """The NVDEC warm-up at start failed (no usable device or driver, a decoder that cannot
    decode the warm-up clip, a warm-up that timed out): this server cannot serve its
    configuration. The message is one line and names the original error."""


def _limits(config: ServeConfig) -> DecodeLimits:
    # A video the transport accepted must not then fail the decoder's own size check.
    return DecodeLimits(max_bytes=max(config.max_receive_bytes, config.max_stream_bytes))


def resolve_decode_backend(config: ServeConfig) -> str:
    """config.decode_backend with "auto" decided: nvdec on a cuda device when PyNvVideoCodec
    imports, else pyav. BackendUnavailable when nvdec or hybrid is asked for and cannot run."""
    wanted = config.decode_backend
    if wanted == "auto":
        return "nvdec" if config.device != "cpu" and nvdec_available() else "pyav"
    if wanted in ("nvdec", "hybrid") and not nvdec_available():
        raise BackendUnavailable(
            f"decode backend {wanted!r} needs PyNvVideoCodec and an NVIDIA driver with NVDEC "
            "(pip install 'vidtag[nvdec]')"
        )
    return wanted


def _dir_stamp(path: Path) -> float:
    """Newest modification time in a model directory: a version being copied in changes it."""
    times = [p.stat().st_mtime for p in path.rglob("*")] + [path.stat().st_mtime]
    return max(times)


def _decode_pool(config: ServeConfig, workers: int, **kw: Any) -> DecodePool:
    """A pool of `workers` decode processes with the server's queue bound and task timeout."""
    return DecodePool(
        DecodePoolConfig(
            workers=workers,
            max_pending=config.decode_queue_size,
            task_timeout_s=2 * _limits(config).max_decode_s,
            spool_bytes=config.upload_spool_bytes,
            **kw,
        )
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
        # One batch runs at a time per model; its intra-op threads spread it over the cores.
        self.inference_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="vidtag-inference"
        )
        self.decode_backend = resolve_decode_backend(config)
        limits = _limits(config)
        torch_device = config.device if config.resolved_runtime == "torch" else None
        self.decode_pool: DecodePool | None = None  # CPU decoding in worker processes
        self.nvdec_pool: DecodePool | None = None  # NVDEC decoding in worker processes
        self.nvdec: NvdecStage | None = None  # NVDEC decoding in threads of this process
        stage: DecodeStage | None = None
        if self.decode_backend != "nvdec":  # pyav, or hybrid's CPU side
            if config.decode_processes:
                self.decode_pool = _decode_pool(config, config.workers)
                stage = pool_decode_stage(
                    self.decode_pool, limits, torch_device, config.resolved_decode_shares("pyav")
                )
            else:
                stage = thread_decode_stage(self.executor, config.workers, config.decode_queue_size)
        if self.decode_backend in ("nvdec", "hybrid"):
            gpu = cuda_index(config.device)
            nvdec_stage: DecodeStage
            if config.decode_processes:
                self.nvdec_pool = _decode_pool(
                    config,
                    config.resolved_nvdec_workers,
                    backend="nvdec",
                    gpu_id=gpu,
                    cuda_waits=config.nvdec_waits,
                    start_timeout_s=120.0,  # CUDA starts in every worker at once
                )
                nvdec_stage = pool_decode_stage(
                    self.nvdec_pool, limits, config.device, config.resolved_decode_shares("nvdec")
                )
            else:
                from vidtag.decode.nvdec_backend import NvdecDecoderPool

                self.nvdec = NvdecStage(
                    NvdecDecoderPool(gpu_id=gpu),
                    limits,
                    config.resolved_nvdec_workers,
                    config.decode_queue_size,
                )
                nvdec_stage = self.nvdec
            if stage is None:
                stage = nvdec_stage
            else:
                stage = HybridStage(
                    [
                        Route("nvdec", nvdec_stage, config.resolved_nvdec_workers),
                        Route("cpu", stage, config.workers),
                    ]
                )
        assert stage is not None
        self.servicer = VideoTaggerServicer(
            self.models,
            stage,
            config.max_stream_bytes,
            self.metrics,
            paths=PathInputs(config.allowed_path_roots, _limits(config).max_bytes),
        )
        pools = [p for p in (self.decode_pool, self.nvdec_pool) if p is not None]
        nvdec = self.nvdec
        self.metrics.queue_depth.labels("decode").set_function(
            lambda: float(
                sum(p.pending for p in pools) + (nvdec.pending if nvdec is not None else 0)
            )
        )
        self.metrics.worker_restarts.set_function(lambda: float(sum(p.restarts for p in pools)))
        self.metrics.spool_bytes.set_function(lambda: float(sum(p.spool_bytes for p in pools)))
        self.metrics.queue_depth.labels("batch").set_function(
            lambda: float(sum(m.batcher.queue_depth for m in self.models.all()))
        )
        self.health = health_aio.HealthServicer()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stopped = asyncio.Event()
        self._refused: dict[tuple[str, str], float] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._lag: asyncio.Task[None] | None = None  # samples the event loop's lag
        self._ready = False  # models loaded: health SERVING

    async def start(self) -> int:
        """Bind and start serving, health NOT_SERVING (SERVING if the models already loaded:
        `serve(bind_when_ready=True)`); return the bound port."""
        cfg = self.config
        # The stock health servicer starts the overall service "" as SERVING: correct that first
        # (a server binding after its models loaded stays SERVING).
        for service in ("", SERVICE_NAME):
            await self.health.set(service, _SERVING if self._ready else _NOT_SERVING)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_receive_bytes),
                ("grpc.max_send_message_length", cfg.max_send_bytes),
            ],
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
            interceptors=(
                [TokenAuthInterceptor(read_tokens(cfg.auth_token_file))]
                if cfg.auth_token_file is not None
                else None
            ),
        )
        pb_grpc.add_VideoTaggerServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
            client_ca = cfg.tls_client_ca_file.read_bytes() if cfg.tls_client_ca_file else None
            credentials = grpc.ssl_server_credentials(
                [(cfg.tls_key_file.read_bytes(), cfg.tls_cert_file.read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            port = server.add_secure_port(cfg.address, credentials)
        else:
            port = server.add_insecure_port(cfg.address)
        if port == 0:
            raise OSError(f"could not bind {cfg.address}")
        await server.start()
        self._server, self.port = server, port
        self._lag = asyncio.create_task(self.metrics.watch_loop())
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
            log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, self.metrics_port)
        state = "SERVING" if self._ready else "NOT_SERVING until the model is warm"
        log.info("listening on %s:%d (%s)", cfg.host, port, state)
        return port

    async def load_models(self) -> None:
        """Load and warm up the configured model off the event loop, then every other model
        version in the repository (a broken one is refused with a log line), then report
        SERVING and keep watching the repository for new versions."""
        loop = asyncio.get_running_loop()
        if self.decode_pool is not None:
            await self.decode_pool.start()
        cfg = self.config
        model_dir = resolve_model(self._repository(), cfg.model_name, cfg.model_version)
        if self.nvdec is not None or self.nvdec_pool is not None:
            # Before the model: a GPU that cannot decode ends the start with that reason.
            spec = load_meta(model_dir).sampling_spec(**cfg.sampling_overrides)
            await self._warm_nvdec(spec)
        model = await loop.run_in_executor(self.executor, self._load_dir, model_dir)
        await model.batcher.start()
        self.models.add(model, default=True)
        await self.scan_repository()
        self._ready = True
        for service in ("", SERVICE_NAME):
            await self.health.set(service, _SERVING)
        log.info("model %s/%s loaded and warm: SERVING", model.name, model.version)
        if self.config.repository_poll_s > 0:
            self._watcher = asyncio.create_task(self._watch())

    async def _warm_nvdec(self, spec: SamplingSpec) -> None:
        """Start the NVDEC decoders: each opens its sessions on a tiny clip, then decodes the
        example clips (`example_clips`) with the default model's `spec`, so that its GPU memory
        is at its working size before the first request. Raises DecoderWarmupError."""
        from vidtag.runtime.tagger import _warmup_clip

        loop = asyncio.get_running_loop()
        try:
            frames = spec.frames + 2  # the plans of `spec` then decode spec.frames pictures
            examples = await loop.run_in_executor(self.executor, example_clips, frames)
            if self.nvdec_pool is not None:
                await self.nvdec_pool.start(examples, spec)  # each worker warms its own NVDEC
            if self.nvdec is not None:
                warm = functools.partial(self.nvdec.warm, _warmup_clip(), examples, spec)
                await loop.run_in_executor(self.executor, warm)
        except Exception as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
            raise DecoderWarmupError(
                f"NVDEC warm-up on {self.config.device} failed ({reason[:500]}); "
                "--decode-backend pyav decodes on the CPU instead"
            ) from exc

    async def scan_repository(self) -> list[tuple[str, str]]:
        """Load every model version in the repository that is neither loaded nor refused in
        its current state; return the ones loaded now."""
        repo = self._repository()
        loop = asyncio.get_running_loop()
        added = []
        for name in list_model_names(repo):
            for version in list_versions(repo, name):
                key = (name, version)
                if key in self.models.loaded():
                    continue
                stamp = _dir_stamp(repo / name / version)
                if self._refused.get(key) == stamp:
                    continue
                try:
                    model = await loop.run_in_executor(
                        self.executor, self._load_dir, repo / name / version
                    )
                    if (model.name, model.version) != key:
                        raise ModelError(
                            f"model.json says {model.name}/{model.version}, "
                            f"but it sits in {name}/{version}"
                        )
                    await model.batcher.start()
                except Exception as exc:
                    self._refused[key] = stamp
                    log.warning("refusing model %s/%s (not served): %s", name, version, exc)
                    continue
                self.models.add(model)
                added.append(key)
                log.info("model %s/%s loaded from the repository and warm", name, version)
        self.metrics.set_models(
            [(m.name, m.version, m.meta.arch, m is self.models.get()) for m in self.models.all()]
        )
        return added

    def _repository(self) -> Path:
        repo = self.config.model_repository
        return Path(repo) if repo is not None else default_repository()

    def _serve_model(self, tagger: Tagger) -> ServedModel:
        cfg = self.config
        batching = BatcherConfig(
            max_batch_size=cfg.max_batch_size,
            max_queue_delay_microseconds=cfg.max_queue_delay_microseconds,
            max_queue_size=cfg.max_queue_size,
        )
        pool = self.decode_pool
        busy = (lambda: pool.busy > 0 or pool.pending > 0) if pool is not None else None
        if cfg.inference_threads is not None or cfg.resolved_runtime != "onnx":
            busy = None  # an explicit thread count is used as given; onnx alone has sessions
        return ServedModel(tagger, batching, self.inference_executor, self.metrics, busy)

    def _load_dir(self, model_dir: Path) -> ServedModel:
        from vidtag.runtime.tagger import Tagger

        tagger = Tagger(
            model_dir,
            limits=_limits(self.config),
            threads=self.config.inference_threads,
            sampling=self.config.sampling_overrides,
            runtime=self.config.runtime_options(),
        )
        model = self._serve_model(tagger)
        # Pool workers and NVDEC threads warm their own decoders.
        model.warmup(decode=self.decode_pool is None and self.decode_backend == "pyav")
        return model

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.repository_poll_s)
            try:
                await self.scan_repository()
            except Exception:
                log.exception("scanning the model repository failed")

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, then let in-flight RPCs finish for up to `grace` seconds; idempotent."""
        if self._stopped.is_set():
            return
        grace = self.config.grace_s if grace is None else grace
        for task in (self._watcher, self._lag):
            if task is not None:
                task.cancel()
        await self.health.enter_graceful_shutdown()
        log.info(
            "shutting down: NOT_SERVING, %d request(s) in flight, grace %.1f s",
            self.servicer.in_flight,
            grace,
        )
        if self._server is not None:
            await self._server.stop(grace)
        # Requests still queued were cancelled with their RPCs; do not wait on running decodes.
        for model in self.models.all():
            await model.batcher.stop(drain=False)
        for pool in (self.decode_pool, self.nvdec_pool):
            if pool is not None:
                await pool.stop()
        if self.nvdec is not None:
            self.nvdec.shutdown()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.inference_executor.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()
        self._stopped.set()
        log.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def serve(
        self,
        on_listening: Callable[[int, int | None], None] | None = None,
        bind_when_ready: bool = False,
    ) -> None:
        """Start, load, serve until SIGTERM or SIGINT, then stop gracefully. `on_listening`
        gets the bound port and metrics port once the server listens: NOT_SERVING while the
        models load, or (`bind_when_ready`, for servers sharing a port) only once they have
        loaded, so that no connection reaches a server that cannot answer yet."""
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
            if not bind_when_ready:
                port = await self.start()
                if on_listening is not None:
                    on_listening(port, self.metrics_port)
            loader = asyncio.create_task(self.load_models())
            waiter = asyncio.create_task(stop_requested.wait())
            done, _ = await asyncio.wait({loader, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if loader in done:
                loader.result()  # a model that fails to load ends the process with its error
                if bind_when_ready:
                    port = await self.start()
                    if on_listening is not None:
                        on_listening(port, self.metrics_port)
                await waiter
            else:
                loader.cancel()
            await self.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop(0)


def serve(
    config: ServeConfig,
    on_listening: Callable[[int, int | None], None] | None = None,
    bind_when_ready: bool = False,
) -> None:
    """Run a server in a fresh event loop until it is signalled to stop (blocking)."""
    asyncio.run(VidtagServer(config).serve(on_listening, bind_when_ready))
