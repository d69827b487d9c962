"""`vidtag serve`: flags -> ServeConfig -> a running server (the only place flags are read)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vidtag.server.config import MiB, ServeConfig

_D = ServeConfig()  # the defaults --help shows are the dataclass's own


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
    parser.add_argument(
        "--max-receive-mb",
        type=float,
        default=_D.max_receive_bytes / MiB,
        metavar="MB",
        help="largest request accepted, in MiB; larger ones get "
        "RESOURCE_EXHAUSTED (default: %(default)g; stock gRPC uses 4)",
    )
    parser.add_argument(
        "--max-send-mb",
        type=float,
        default=_D.max_send_bytes / MiB,
        metavar="MB",
        help="largest response sent, in MiB (default: %(default)g)",
    )
    parser.add_argument(
        "--max-stream-mb",
        type=float,
        default=_D.max_stream_bytes / MiB,
        metavar="MB",
        help="largest total upload through TagVideoStream, in MiB (default: %(default)g)",
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
        help="requests decoded and inferred at once; more wait in a queue (default: %(default)s)",
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
        "--log-level",
        default=_D.log_level,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log verbosity; INFO logs one line per request (default: %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """Build the ServeConfig the parsed flags describe (raises ValueError on bad values)."""
    return ServeConfig(
        host=args.host,
        port=args.port,
        model_repository=args.models,
        model_name=args.model,
        model_version=args.model_version,
        max_receive_bytes=int(args.max_receive_mb * MiB),
        max_send_bytes=int(args.max_send_mb * MiB),
        max_stream_bytes=int(args.max_stream_mb * MiB),
        grace_s=args.grace_s,
        workers=args.workers,
        inference_threads=args.inference_threads,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        log_level=args.log_level,
        metrics_port=None
        if args.metrics_port is not None and args.metrics_port < 0
        else args.metrics_port,
        metrics_host=args.metrics_host,
    )


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
    from vidtag.errors import ModelError
    from vidtag.server.app import serve

    try:
        serve(config)
    except ModelError as exc:
        logging.getLogger(__name__).error("cannot load model: %s", exc)
        return 1
    return 0
