"""The server's one configuration object, built at the CLI boundary (no environment reads here)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vidtag.runtime.backends import (
    RuntimeOptions,
    check_runtime,
    default_precision,
    default_runtime,
)
from vidtag.runtime.device import CUDA_WAITS, check_device_name, is_cuda
from vidtag.runtime.mps import CUDA_MPS

MiB = 1024 * 1024
DECODE_BACKENDS = ("pyav", "nvdec", "hybrid", "auto")


@dataclass(frozen=True)
class ServeConfig:
    """Everything `vidtag serve` can be told; validated on construction.

    `model_repository=None` means the package's default repository; `model_name=None` /
    `model_version=None` mean the repository's default model and that model's latest version.
    """

    host: str = "[::]"
    port: int = 50051  # 0 = any free port; the bound port is reported by the server
    model_repository: Path | None = None
    model_name: str | None = None
    model_version: str | None = None
    # Stock gRPC refuses messages over 4 MiB; a 30 s phone clip is often bigger.
    max_receive_bytes: int = 64 * MiB
    max_send_bytes: int = 64 * MiB
    # Total bytes a TagVideoStream upload may carry (RESOURCE_EXHAUSTED beyond).
    max_stream_bytes: int = 256 * MiB
    # How long in-flight RPCs get to finish after SIGTERM before they are cancelled.
    grace_s: float = 10.0
    # Decoders working at once (processes, or threads without process isolation).
    workers: int = 2
    # Decode in worker processes: an FFmpeg crash fails only its request and the worker is
    # replaced. False decodes in threads of the server process (no isolation, no IPC).
    decode_processes: bool = True
    decode_queue_size: int = 64  # waiting for a decoder; beyond: RESOURCE_EXHAUSTED
    # Shared memory carrying uploads to decode worker processes (`vidtag.server.spool`: a
    # 3.7 MB upload's round trip to a worker 4.4 -> 2.0 ms), in use and kept for reuse; an
    # upload that does not fit, or every one with 0, crosses a pipe.
    upload_spool_bytes: int = 256 * MiB
    # Dynamic batching per model, with Triton's names and meaning.
    max_batch_size: int = 8
    max_queue_delay_microseconds: int = 0
    max_queue_size: int = 64  # waiting for a batch; beyond: RESOURCE_EXHAUSTED
    # Intra-op threads of the inference runtime; None = the runtime's own choice.
    inference_threads: int | None = None
    # Decoders sharing one clip's GOPs when the decoders are idle (under load: 1 per clip).
    # None = min(8, 2 x cores): on 16 cores 8 halves the time of 2 and 16 adds nothing
    # (8 keyframes); on 2 cores 4 beat 2 (median 58.5 vs 67.0 ms, 30 s 540x960 GOP 4 s;
    # 25.4 vs 30.3 ms over STB-1 test clips): the spare threads absorb uneven GOPs. FFmpeg's
    # own threading does not speed up independent keyframes at all.
    decode_threads: int | None = None
    # Cap on a clip's estimated decode time (SamplingSpec.budget_ms, reference-core ms) for
    # `fast` plans; None: the model's own (unbounded by default). Keyframes nearest the
    # targets are decoded regardless; forward decoding (sparse keyframes) stops at the cap.
    decode_budget_ms: float | None = None
    # `fast` plans: minimum gain in temporal accuracy per unit of decode cost (lower decodes
    # more) and the cap on a clip's cost in keyframe units; None: the model's own (SamplingSpec
    # defaults 0.06 and 48). stb1/4 on the STB-1 test split: 0.03 and 96 close the gap to
    # `exact` (mean Jaccard 0.903 vs 0.908, default 0.887) at decode p90 260 / p99 818 ms on 2
    # cores (default 190 / 553); with decode_budget_ms 400, 0.890 at p99 482.
    decode_tradeoff: float | None = None
    decode_budget: float | None = None
    # RPCs beyond this many in flight are refused with RESOURCE_EXHAUSTED; None = no cap.
    max_concurrent_rpcs: int | None = None
    log_level: str = "INFO"
    # Seconds between scans of the model repository for new versions (0: load once, no watch).
    repository_poll_s: float = 5.0
    # Prometheus /metrics over HTTP on this port (0: any free port; None: no metrics endpoint).
    metrics_port: int | None = 9464
    metrics_host: str = "0.0.0.0"
    # File of bearer tokens (one per line): VideoTagger calls without one get UNAUTHENTICATED;
    # health and reflection stay open. None: no authentication.
    auth_token_file: Path | None = None
    # TLS: PEM certificate chain and key of the server; with tls_client_ca_file, mutual TLS
    # (clients must present a certificate signed by that CA). None: plaintext.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Directories whose files a request may name by server-side path (TagVideoRequest.path),
    # after resolving `..` and symbolic links; empty: path inputs are refused.
    allowed_path_roots: tuple[Path, ...] = ()
    # Where the network runs: "cpu", "cuda" or "cuda:N".
    device: str = "cpu"
    # "onnx" (ONNX Runtime, CPU only) or "torch" (PyTorch); None: onnx on cpu, torch on cuda.
    runtime: str | None = None
    # Torch runtime: "fp32", "fp16" (CUDA only) or "bf16"; None: fp16 on cuda, fp32 on cpu.
    precision: str | None = None
    # Torch runtime on CUDA: one CUDA graph per batch-size bucket, captured at warm-up.
    cuda_graphs: bool = True
    # "pyav" (CPU decode), "nvdec" (GPU decode in threads of this process, frames stay in
    # the device's memory), "hybrid" (both take requests) or "auto" (nvdec on cuda when
    # PyNvVideoCodec imports, else pyav). nvdec and hybrid need a cuda device.
    decode_backend: str = "auto"
    # Decoders using NVDEC at once, each with its own sessions: worker processes (each with a
    # CUDA context and warmed-up buffers, ~1.5 GB of GPU memory on an H100) or, without
    # decode_processes, threads of the server (which stop scaling at ~4: Python holds them).
    # None = half the cores, at most 16.
    nvdec_workers: int | None = None
    # Decode worker processes sharing one clip's GOPs while enough of them are idle (each
    # plans the clip, decodes its group of GOPs; `vidtag.decode.shares`): lower latency on an
    # idle server at the price of planning the clip once per share. None = 4 with NVDEC
    # processes (threads of one process do not speed NVDEC up), 1 (never) with PyAV, whose
    # `decode_threads` share the GOPs inside one process: on 2 cores, 2 workers, c=1, 30 s
    # 540x960 clip, 2 shares decoded in 65-68 ms median against 59-63 undivided.
    decode_shares: int | None = None
    # How each NVDEC decode process waits for the GPU: "block" (sleep), "spin", "yield" or
    # "auto" (CUDA's default: spin while the process has no more contexts than the machine
    # has cores, i.e. a core per waiting decoder; `vidtag.runtime.device.set_cuda_waits`).
    nvdec_waits: str = "block"
    # "on": a private CUDA MPS daemon for this server's CUDA processes (`vidtag.runtime.mps`:
    # server processes and NVDEC decoders share the GPU at once instead of time-slicing their
    # contexts); the server runs without it, saying why, where it cannot start. Ignored off
    # CUDA and where CUDA_MPS_PIPE_DIRECTORY already names a daemon.
    cuda_mps: str = "off"
    # Server processes sharing the port (SO_REUSEPORT), each with its own event loop, model
    # and share of the decoders: one process tops out at a few hundred requests/s.
    server_processes: int = 1

    @property
    def resolved_runtime(self) -> str:
        return self.runtime or default_runtime(self.device)

    @property
    def resolved_precision(self) -> str:
        return self.precision or default_precision(self.device)

    def runtime_options(self) -> RuntimeOptions:
        """How each model's network runs."""
        return RuntimeOptions(
            runtime=self.resolved_runtime,
            device=self.device,
            precision=self.resolved_precision,
            cuda_graphs=self.cuda_graphs,
            max_batch_size=self.max_batch_size,
        )

    @property
    def sampling_overrides(self) -> dict[str, float | int]:
        """SamplingSpec fields the server sets over the model's own."""
        fields = {"budget_ms": self.decode_budget_ms, "tradeoff": self.decode_tradeoff,
                  "budget": self.decode_budget}  # fmt: skip
        out: dict[str, float | int] = {"threads": self.resolved_decode_threads}
        return out | {k: v for k, v in fields.items() if v is not None}

    @property
    def resolved_nvdec_workers(self) -> int:
        return self.nvdec_workers or max(1, min(16, (os.cpu_count() or 2) // 2))

    def resolved_decode_shares(self, backend: str) -> int:
        """`decode_shares` for a pool of `backend` decoder processes."""
        return self.decode_shares or (4 if backend == "nvdec" else 1)

    @property
    def resolved_decode_threads(self) -> int:
        return self.decode_threads or min(8, 2 * (os.cpu_count() or 1))

    def __post_init__(self) -> None:
        # Given as any sequence of str or Path (a config file's list): stored as Paths.
        object.__setattr__(self, "allowed_path_roots", tuple(map(Path, self.allowed_path_roots)))
        for root in self.allowed_path_roots:
            if not root.is_absolute():
                raise ValueError(f"allowed_path_roots must be absolute, got {str(root)!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for name in (
            "max_receive_bytes",
            "max_send_bytes",
            "max_stream_bytes",
            "workers",
            "max_batch_size",
            "max_queue_size",
            "decode_queue_size",
            "server_processes",
            "decode_shares",  # these from here may be None: the default
            "nvdec_workers",
            "decode_threads",
            "inference_threads",
            "max_concurrent_rpcs",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in (  # None where allowed: the default
            "max_queue_delay_microseconds",
            "repository_poll_s",
            "grace_s",
            "upload_spool_bytes",
            "decode_budget_ms",
            "decode_tradeoff",
            "decode_budget",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name, allowed in (("nvdec_waits", CUDA_WAITS), ("cuda_mps", CUDA_MPS)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ValueError(f"unknown log level {self.log_level!r}")
        self._check_device()

    def _check_device(self) -> None:
        check_device_name(self.device)
        check_runtime(self.resolved_runtime, self.device, self.resolved_precision)
        if self.decode_backend not in DECODE_BACKENDS:
            raise ValueError(
                f"decode_backend must be one of {list(DECODE_BACKENDS)}, "
                f"got {self.decode_backend!r}"
            )
        if self.decode_backend in ("nvdec", "hybrid") and not is_cuda(self.device):
            raise ValueError(
                f"decode_backend {self.decode_backend!r} decodes into GPU memory for the "
                f"network: it needs device 'cuda' or 'cuda:N', got {self.device!r}"
            )

    @property
    def address(self) -> str:
        """The `host:port` string gRPC binds to."""
        return f"{self.host}:{self.port}"
