"""`vidtag serve`: flags -> ServeConfig -> a running server (the only place flags are read)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vidtag.runtime.device import CUDA_WAITS
from vidtag.runtime.mps import CUDA_MPS
from vidtag.server.config import MiB, ServeConfig
from vidtag.server.layers import build

_D = ServeConfig()  # the defaults --help shows are the dataclass's own


def _mib_flag(parser: argparse.ArgumentParser, flag: str, default_bytes: int, text: str) -> None:
    """A size flag in MiB (float) over a ServeConfig field in bytes; `text` is its help."""
    parser.add_argument(flag, type=float, default=default_bytes / MiB, metavar="MB", help=text)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `vidtag serve` flags to `parser`."""
    parser.add_argument(
        "--host",
        default=_D.host,
        help="interface to bind; '[::]' is every IPv4 and IPv6 address (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_D.port,
        help="TCP port; 0 picks a free one and logs it (default: %(default)s)",
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        metavar="DIR",
        help="model repository laid out as DIR/<name>/<version>/ "
        "(default: $VIDTAG_MODELS, else the bundled models/ directory)",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="model to load and serve as the default (default: the repository's default model)",
    )
    parser.add_argument(
        "--model-version",
        default=None,
        metavar="VERSION",
        help="version of --model to load (default: the latest)",
    )
    _mib_flag(
        parser,
        "--max-receive-mb",
        _D.max_receive_bytes,
        "largest request accepted, in MiB; larger ones get "
        "RESOURCE_EXHAUSTED (default: %(default)g; stock gRPC uses 4)",
    )
    _mib_flag(
        parser,
        "--max-send-mb",
        _D.max_send_bytes,
        "largest response sent, in MiB (default: %(default)g)",
    )
    _mib_flag(
        parser,
        "--max-stream-mb",
        _D.max_stream_bytes,
        "largest total upload through TagVideoStream, in MiB (default: %(default)g)",
    )
    parser.add_argument(
        "--grace-s",
        type=float,
        default=_D.grace_s,
        metavar="S",
        help="on SIGTERM/SIGINT, seconds in-flight requests get to finish "
        "before they are cancelled (default: %(default)g)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=_D.workers,
        metavar="N",
        help="requests decoded at once; more wait in a queue (default: %(default)s)",
    )
    parser.add_argument(
        "--decode-processes",
        type=lambda v: v.lower() in ("1", "true", "yes", "on"),
        default=_D.decode_processes,
        metavar="BOOL",
        help="decode in worker processes, so an FFmpeg crash fails only its request and the "
        "worker is replaced; false decodes in threads (default: %(default)s)",
    )
    parser.add_argument(
        "--decode-queue-size",
        type=int,
        default=_D.decode_queue_size,
        metavar="N",
        help="requests waiting for a decoder; more are refused with RESOURCE_EXHAUSTED "
        "(default: %(default)s)",
    )
    _mib_flag(
        parser,
        "--upload-spool-mb",
        _D.upload_spool_bytes,
        "shared memory carrying uploads to the decode processes, in MiB, in use and kept "
        "for reuse; an upload beyond it crosses a pipe, 0: always (default: %(default)g)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=_D.max_batch_size,
        metavar="N",
        help="dynamic batching: most requests per inference batch (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue-delay-microseconds",
        type=int,
        default=_D.max_queue_delay_microseconds,
        metavar="US",
        help="dynamic batching: how long the oldest waiting request may wait for batch-mates; "
        "0 runs whatever is queued at once (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queue-size",
        type=int,
        default=_D.max_queue_size,
        metavar="N",
        help="dynamic batching: requests waiting for a batch; more are refused with "
        "RESOURCE_EXHAUSTED (default: %(default)s)",
    )
    parser.add_argument(
        "--decode-threads",
        type=int,
        default=None,
        metavar="N",
        help="decoders sharing one clip's GOPs while decoders are idle (default: min(8, cores))",
    )
    parser.add_argument(
        "--decode-budget-ms",
        type=float,
        default=None,
        metavar="MS",
        help="cap on a clip's estimated decode time, reference-core ms (fast plans: the "
        "keyframes nearest the targets are decoded regardless; default: the model's, none)",
    )
    parser.add_argument(
        "--decode-tradeoff",
        type=float,
        default=None,
        metavar="X",
        help="fast plans: minimum gain in temporal accuracy per unit of decode cost; lower "
        "decodes more, e.g. 0.03 (default: the model's, 0.06)",
    )
    parser.add_argument(
        "--decode-budget",
        type=float,
        default=None,
        metavar="KEYFRAMES",
        help="fast plans: cap on a clip's decode cost in keyframe units, e.g. 96 (default: the "
        "model's, 48)",
    )
    parser.add_argument(
        "--inference-threads",
        type=int,
        default=None,
        metavar="N",
        help="intra-op threads of the inference runtime per model (default: the runtime's choice)",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=None,
        metavar="N",
        help="RPCs in flight beyond N are refused with RESOURCE_EXHAUSTED (default: no cap)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=_D.metrics_port,
        metavar="PORT",
        help="Prometheus /metrics HTTP port; 0 picks a free one, -1 disables "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-host",
        default=_D.metrics_host,
        help="interface the metrics endpoint binds (default: %(default)s)",
    )
    parser.add_argument(
        "--repository-poll-s",
        type=float,
        default=_D.repository_poll_s,
        metavar="S",
        help="seconds between scans of the model repository; new versions are loaded, warmed up "
        "and served without a restart, broken ones refused with a log line; 0: no watching "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        default=_D.auth_token_file,
        metavar="FILE",
        help="require 'authorization: Bearer <token>' metadata on VideoTagger calls, with a "
        "token from FILE (one per line); health and reflection stay open (default: %(default)s)",
    )
    parser.add_argument(
        "--tls-cert-file",
        type=Path,
        default=_D.tls_cert_file,
        metavar="PEM",
        help="serve TLS with this certificate chain (needs --tls-key-file) (default: %(default)s)",
    )
    parser.add_argument(
        "--tls-key-file",
        type=Path,
        default=_D.tls_key_file,
        metavar="PEM",
        help="private key of --tls-cert-file (default: %(default)s)",
    )
    parser.add_argument(
        "--tls-client-ca-file",
        type=Path,
        default=_D.tls_client_ca_file,
        metavar="PEM",
        help="mutual TLS: require client certificates signed by this CA (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-path-root",
        action="append",
        type=lambda p: Path(p).absolute(),
        default=list(_D.allowed_path_roots),
        metavar="DIR",
        help="let requests name a file under DIR by its server-side path instead of uploading "
        "it (repeatable); paths are resolved (.., symbolic links) and must stay inside a DIR; "
        "URLs are never fetched (default: none, path inputs are refused)",
    )
    parser.add_argument(
        "--device",
        default=_D.device,
        metavar="DEV",
        help="where the network runs: cpu, cuda or cuda:N; a cuda device this machine lacks "
        "fails at start (default: %(default)s)",
    )
    parser.add_argument(
        "--runtime",
        choices=["onnx", "torch"],
        default=_D.runtime,
        help="inference runtime: onnx (ONNX Runtime, CPU only) or torch (PyTorch, CPU or "
        "CUDA, the artifact's ONNX graph run by vidtag's own interpreter) "
        "(default: onnx on cpu, torch on cuda)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        default=_D.precision,
        help="torch runtime precision; weights are cast once at load; fp16 needs cuda "
        "(default: fp16 on cuda, fp32 on cpu)",
    )
    parser.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_const",
        const=False,
        default=_D.cuda_graphs,
        help="torch runtime on cuda: run eagerly instead of replaying one CUDA graph per "
        "batch-size bucket (default: graphs on)",
    )
    parser.add_argument(
        "--decode-backend",
        choices=["pyav", "nvdec", "hybrid", "auto"],
        default=_D.decode_backend,
        help="pyav: CPU decode (worker processes); nvdec: GPU decode (worker processes, or "
        "threads of the server with --decode-processes false, where the frames stay in GPU memory "
        "and are normalised there); hybrid: both, each request to the "
        "one with fewer in flight per decoder; auto: nvdec on cuda when PyNvVideoCodec "
        "imports, else pyav (default: %(default)s)",
    )
    parser.add_argument(
        "--nvdec-workers",
        type=int,
        default=_D.nvdec_workers,
        metavar="N",
        help="decoders using NVDEC at once (processes; threads with --decode-processes false), "
        "each with its own sessions (default: half the cores, at most 16)",
    )
    parser.add_argument(
        "--decode-shares",
        type=int,
        default=_D.decode_shares,
        metavar="N",
        help="decode processes sharing one clip's GOPs while that many are idle (lower "
        "latency when the server is not busy; each share plans the clip again) (default: 4 "
        "with NVDEC processes, 1 with PyAV, whose --decode-threads share a clip in one process)",
    )
    parser.add_argument(
        "--nvdec-waits",
        default=_D.nvdec_waits,
        choices=list(CUDA_WAITS),
        help="how each NVDEC decode process waits for the GPU: block sleeps; auto is CUDA's "
        "default, which spins a core per waiting process (default: %(default)s)",
    )
    parser.add_argument(
        "--cuda-mps",
        default=_D.cuda_mps,
        choices=list(CUDA_MPS),
        help="on: start a private CUDA MPS daemon so that the server's CUDA processes share "
        "the GPU at once instead of time-slicing it (for --server-processes > 1 with NVDEC "
        "decoders; the server runs without it, saying why, where it cannot start) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--server-processes",
        type=int,
        default=_D.server_processes,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT; connections are spread over "
        "them), each with its model and its share of --workers and --nvdec-workers; metrics "
        "merged with a server label (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=_D.log_level,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log verbosity; INFO logs one line per request (default: %(default)s)",
    )
    _finish_parser(parser)


# flag dest -> (ServeConfig field, conversion from the flag's unit)
_FLAG_FIELDS: dict[str, tuple[str, Any]] = {
    "host": ("host", None),
    "port": ("port", None),
    "models": ("model_repository", None),
    "model": ("model_name", None),
    "model_version": ("model_version", None),
    "max_receive_mb": ("max_receive_bytes", lambda mb: int(mb * MiB)),
    "max_send_mb": ("max_send_bytes", lambda mb: int(mb * MiB)),
    "max_stream_mb": ("max_stream_bytes", lambda mb: int(mb * MiB)),
    "grace_s": ("grace_s", None),
    "workers": ("workers", None),
    "decode_processes": ("decode_processes", None),
    "decode_queue_size": ("decode_queue_size", None),
    "upload_spool_mb": ("upload_spool_bytes", lambda mb: int(mb * MiB)),
    "max_batch_size": ("max_batch_size", None),
    "max_queue_delay_microseconds": ("max_queue_delay_microseconds", None),
    "max_queue_size": ("max_queue_size", None),
    "inference_threads": ("inference_threads", None),
    "decode_threads": ("decode_threads", None),
    "decode_budget_ms": ("decode_budget_ms", None),
    "decode_tradeoff": ("decode_tradeoff", None),
    "decode_budget": ("decode_budget", None),
    "max_concurrent_rpcs": ("max_concurrent_rpcs", None),
    "log_level": ("log_level", None),
    "repository_poll_s": ("repository_poll_s", None),
    "metrics_port": ("metrics_port", lambda p: None if p < 0 else p),
    "metrics_host": ("metrics_host", None),
    "auth_token_file": ("auth_token_file", None),
    "tls_cert_file": ("tls_cert_file", None),
    "tls_key_file": ("tls_key_file", None),
    "tls_client_ca_file": ("tls_client_ca_file", None),
    "allow_path_root": ("allowed_path_roots", tuple),
    "device": ("device", None),
    "runtime": ("runtime", None),
    "precision": ("precision", None),
    "cuda_graphs": ("cuda_graphs", None),
    "decode_backend": ("decode_backend", None),
    "nvdec_workers": ("nvdec_workers", None),
    "decode_shares": ("decode_shares", None),
    "nvdec_waits": ("nvdec_waits", None),
    "cuda_mps": ("cuda_mps", None),
    "server_processes": ("server_processes", None),
}


def _finish_parser(parser: argparse.ArgumentParser) -> None:
    """Render each flag's default into its help, then default it to None, so that only the
    flags actually given override the environment and the config file."""
    for action in parser._actions:
        if action.dest in _FLAG_FIELDS and action.help:
            action.help = action.help % {"default": action.default}
            action.default = None
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML or JSON file of settings named as ServeConfig's fields (units: bytes, "
        "seconds), optionally under [serve]; precedence: defaults < file < $VIDTAG_<FIELD> "
        "environment variables < flags",
    )


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ServeConfig:
    """The ServeConfig of the given flags over $VIDTAG_* over --config over the defaults
    (raises ValueError on bad values, naming where they came from)."""
    flags: dict[str, Any] = {}
    for dest, (name, convert) in _FLAG_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            flags[name] = convert(value) if convert else value
    return build(flags, os.environ if env is None else env, getattr(args, "config", None))


def run_serve(args: argparse.Namespace) -> int:
    """Run `vidtag serve` until signalled; return the process exit code."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        logging.getLogger(__name__).error("invalid configuration: %s", exc)
        return 2
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from vidtag.errors import BackendUnavailable
    from vidtag.runtime.device import is_cuda, require_device
    from vidtag.runtime.mps import serving_mps

    # Before this process or any it starts initialises CUDA: they all find the daemon.
    with serving_mps(config.cuda_mps == "on" and is_cuda(config.device)):
        try:
            require_device(config.device)
        except BackendUnavailable as exc:
            logging.getLogger(__name__).error("cannot serve on --device %s: %s", config.device, exc)
            return 2
        if config.server_processes > 1:
            from vidtag.server.multi import supervise

            return supervise(config)
        return serve_exit_code(config)


def serve_exit_code(
    config: ServeConfig,
    on_listening: Callable[[int, int | None], None] | None = None,
    bind_when_ready: bool = False,
) -> int:
    """Serve `config` until signalled; the exit status, with a failure's reason logged."""
    from vidtag.errors import BackendUnavailable, ModelError
    from vidtag.server.app import DecoderWarmupError, serve

    try:
        serve(config, on_listening, bind_when_ready)
    except DecoderWarmupError as exc:  # like a missing device: this configuration cannot serve
        logging.getLogger(__name__).error("cannot serve: %s", exc)
        return 2
    except ModelError as exc:
        logging.getLogger(__name__).error("cannot load model: %s", exc)
        return 1
    except BackendUnavailable as exc:
        logging.getLogger(__name__).error("cannot serve: %s", exc)
        return 1
    return 0
