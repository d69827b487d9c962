"""`vidtag tag PATH...`: tag clips over gRPC (`--server`) or in-process, print a table or JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from vidtag.errors import VidtagError

if TYPE_CHECKING:
    from vidtag.results import TagResult

TagFn = Callable[[Path], "TagResult"]
# The gRPC policies VidtagClient accepts (grpc_client.LB_POLICIES; not imported here so that
# `vidtag --help` does not load grpc).
LB_CHOICES = ("pick_first", "round_robin")


def add_tag_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `vidtag tag` arguments to `parser`."""
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="video files to tag")
    parser.add_argument(
        "--server",
        metavar="TARGET",
        default=None,
        help="tag over gRPC on this server: HOST:PORT, dns:///HOST:PORT (every address the "
        "name resolves to, e.g. a Kubernetes headless Service, calls spread round robin) or "
        "ipv4:IP:PORT,IP:PORT; without it the model runs in this process",
    )
    parser.add_argument(
        "--load-balancing",
        choices=LB_CHOICES,
        default=None,
        help="with --server: gRPC load-balancing policy (default: round_robin for dns:, ipv4: "
        "and ipv6: targets, pick_first for HOST:PORT)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="DIR",
        help="in-process only: a model directory (<repo>/<name>/<version>) or a model "
        "repository (its default model); default: the bundled models/ repository",
    )
    parser.add_argument(
        "--model-name",
        default="",
        metavar="NAME",
        help="with --server: which of the server's models to use (default: its default)",
    )
    parser.add_argument(
        "--model-version",
        default="",
        metavar="VERSION",
        help="with --server: which version of the model (default: the latest loaded)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help="return at most K tags (default: the model's policy)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="X",
        help="return tags scoring at least X in [0, 1] (default: the model's per-tag thresholds)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per clip (JSON Lines) instead of a table",
    )
    parser.add_argument(
        "--embedding",
        action="store_true",
        help="include the clip embedding (JSON output only)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="with --server: per-clip deadline in seconds (default: %(default)g)",
    )


def result_to_json(path: Path, result: TagResult, *, embedding: bool = False) -> dict[str, Any]:
    """The JSON object `vidtag tag --json` prints for one clip."""
    v = result.video
    obj: dict[str, Any] = {
        "path": str(path),
        "model_name": result.model_name,
        "model_version": result.model_version,
        "tags": [
            {"name": t.name, "score": round(float(t.score), 6), "group": t.group}
            for t in result.tags
        ],
        "video": {
            "width": v.width,
            "height": v.height,
            "duration_s": v.duration,
            "fps": v.fps,
            "codec": v.codec,
            "rotation": v.rotation,
            "frames_decoded": v.frames_decoded,
            "sampled_timestamps_s": list(v.sampled_timestamps),
        },
        "timings_ms": {
            k: round(s * 1000.0, 3) for k, s in result.timings.items() if k != "batch_size"
        },
    }
    if "batch_size" in result.timings:  # a count (a server's batch), not seconds
        obj["batch_size"] = int(result.timings["batch_size"])
    if embedding and result.embedding is not None:
        obj["embedding"] = [float(x) for x in result.embedding]
    return obj


def format_table(path: Path, result: TagResult) -> str:
    """The human-readable block `vidtag tag` prints for one clip."""
    v = result.video
    total_ms = result.timings.get("total", 0.0) * 1000.0
    lines = [
        f"{path}  ({v.width}x{v.height} {v.codec} {v.duration:.2f}s {v.fps:.3g}fps, "
        f"model {result.model_name}/{result.model_version}, {total_ms:.1f} ms)"
    ]
    if not result.tags:
        lines.append("  (no tag above threshold)")
    else:
        width = max(len("tag"), *(len(t.name) for t in result.tags))
        gwidth = max(len("group"), *(len(t.group) for t in result.tags))
        lines.append(f"  {'#':>3}  {'tag':<{width}}  {'group':<{gwidth}}  score")
        for i, t in enumerate(result.tags, 1):
            lines.append(f"  {i:>3}  {t.name:<{width}}  {t.group:<{gwidth}}  {t.score:.3f}")
    return "\n".join(lines)


def _local_tag_fn(args: argparse.Namespace) -> tuple[TagFn, Callable[[], None]]:
    from vidtag import Tagger
    from vidtag.runtime.repository import default_repository

    model = args.model
    if model is None:
        tagger = Tagger.from_repository(default_repository())
    elif _is_model_dir(model):
        tagger = Tagger(model)
    else:
        tagger = Tagger.from_repository(model)

    def tag(path: Path) -> TagResult:
        return tagger.tag(path, top_k=args.top_k, threshold=args.threshold)

    return tag, lambda: None


def _is_model_dir(path: Path) -> bool:
    from vidtag.runtime.artifact import METADATA_FILE

    return (path / METADATA_FILE).is_file()


def _remote_tag_fn(args: argparse.Namespace) -> tuple[TagFn, Callable[[], None]]:
    from vidtag.client.grpc_client import VidtagClient

    client = VidtagClient(
        args.server, timeout=args.timeout, load_balancing=getattr(args, "load_balancing", None)
    )

    def tag(path: Path) -> TagResult:
        return client.tag(
            path,
            top_k=args.top_k,
            threshold=args.threshold,
            return_embedding=args.embedding,
            model_name=args.model_name,
            model_version=args.model_version,
        )

    return tag, client.close


def run_tag(
    args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    """Run `vidtag tag`; exit code 0 if every clip was tagged, 1 if any failed, 2 on bad usage.

    A clip that fails is reported (as a JSON object with an "error" key under `--json`) and the
    remaining clips are still tagged.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if args.server is not None and args.model is not None:
        print("vidtag tag: --model is a local directory; with --server use --model-name", file=err)
        return 2
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        print("vidtag tag: --threshold must be in [0, 1]", file=err)
        return 2
    if args.top_k is not None and args.top_k < 1:
        print("vidtag tag: --top-k must be >= 1", file=err)
        return 2
    try:
        tag, close = _remote_tag_fn(args) if args.server is not None else _local_tag_fn(args)
    except VidtagError as exc:
        print(f"vidtag tag: {exc}", file=err)
        return 1
    failed = 0
    try:
        for i, path in enumerate(args.paths):
            try:
                result = tag(path)
            except (VidtagError, OSError) as exc:
                failed += 1
                _report_failure(path, exc, args.json, out, err)
                continue
            except Exception as exc:  # grpc.RpcError and friends: report, keep going
                if not _is_rpc_error(exc):
                    raise
                failed += 1
                _report_failure(path, exc, args.json, out, err)
                continue
            if args.json:
                obj = result_to_json(path, result, embedding=args.embedding)
                print(json.dumps(obj), file=out, flush=True)
            else:
                if i:
                    print(file=out)
                print(format_table(path, result), file=out, flush=True)
    finally:
        close()
    return 1 if failed else 0


def _is_rpc_error(exc: BaseException) -> bool:
    import grpc

    return isinstance(exc, grpc.RpcError)


def _report_failure(
    path: Path, exc: BaseException, as_json: bool, out: IO[str], err: IO[str]
) -> None:
    message = _describe(exc)
    if as_json:
        obj = {"path": str(path), "error": {"type": type(exc).__name__, "message": message}}
        print(json.dumps(obj), file=out, flush=True)
    print(f"vidtag tag: {path}: {message}", file=err, flush=True)


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):  # a grpc.RpcError that is also a grpc.Call
        return f"{code().name}: {details()}"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------- `vidtag health`

DEFAULT_HEALTH_PORT = 50051


def default_health_target(env: Mapping[str, str] | None = None) -> str:
    """`127.0.0.1:<port>` of a server in the same host or container: $VIDTAG_PORT (the
    variable `vidtag serve` reads its port from), else the default port."""
    env = os.environ if env is None else env
    return f"127.0.0.1:{env.get('VIDTAG_PORT') or DEFAULT_HEALTH_PORT}"


def add_health_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `vidtag health` arguments to `parser`."""
    parser.add_argument(
        "--server",
        metavar="TARGET",
        default=None,
        help="server to ask (default: 127.0.0.1:$VIDTAG_PORT, else 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="grpc.health.v1 service name: '' (default) is the server as a whole, "
        "vidtag.v1.VideoTagger the tagging service",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        metavar="S",
        help="deadline of the check in seconds (default: %(default)g)",
    )
    for flag, help_text in (
        ("--tls-ca-file", "check over TLS, trusting this CA (default: plaintext)"),
        ("--tls-cert-file", "mutual TLS: the client certificate chain"),
        ("--tls-key-file", "mutual TLS: the client private key"),
    ):
        parser.add_argument(flag, type=Path, default=None, metavar="PEM", help=help_text)


def run_health(
    args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    """Run `vidtag health`: print the grpc.health.v1 status; exit code 0 only for SERVING
    (1 for any other status or an unreachable server), for container and script health
    checks."""
    import grpc

    from vidtag.client.grpc_client import VidtagClient

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    target = args.server or default_health_target()
    try:
        with VidtagClient(
            target,
            timeout=args.timeout,
            tls_ca_file=args.tls_ca_file,
            tls_cert_file=args.tls_cert_file,
            tls_key_file=args.tls_key_file,
        ) as client:
            status = client.health(args.service)
    except grpc.RpcError as exc:
        print(f"vidtag health: {target}: {_describe(exc)}", file=err)
        return 1
    print(status, file=out)
    return 0 if status == "SERVING" else 1
