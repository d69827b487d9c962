"""Python client for the vidtag gRPC service; returns the same `TagResult` as in-process tagging."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vidtag.errors import InvalidVideo, ModelError
from vidtag.v1 import tagger_pb2 as pb
from vidtag.v1 import tagger_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from vidtag.results import TagResult

DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
# gRPC load-balancing policies the client can be told to use (gRPC's own names).
LB_POLICIES: Final = ("pick_first", "round_robin")
# Target schemes whose resolver can return several addresses: round_robin by default.
_MULTI_ADDRESS_SCHEMES: Final = ("dns:", "ipv4:", "ipv6:")


def default_load_balancing(target: str) -> str | None:
    """The policy `VidtagClient` picks when told none: "round_robin" for a `dns:///`,
    `ipv4:` or `ipv6:` target (every address the name resolves to gets calls in turn, e.g.
    every pod behind a Kubernetes headless Service), else None (gRPC's default, pick_first:
    one connection to the first address that answers)."""
    return "round_robin" if target.lower().startswith(_MULTI_ADDRESS_SCHEMES) else None


def service_config(load_balancing: str) -> str:
    """The gRPC service config JSON that selects `load_balancing` for every method."""
    if load_balancing not in LB_POLICIES:
        known = ", ".join(LB_POLICIES)
        raise ValueError(f"unknown load-balancing policy {load_balancing!r} (known: {known})")
    return json.dumps({"loadBalancingConfig": [{load_balancing: {}}]})


def response_to_result(response: pb.TagVideoResponse) -> TagResult:
    """Translate a wire response (timings in ms) to the domain `TagResult` (seconds)."""
    from vidtag.results import TagResult, TagScore, VideoInfo

    v = response.video
    t = response.timings
    return TagResult(
        tags=tuple(TagScore(name=s.name, score=s.score, group=s.group) for s in response.tags),
        embedding=np.asarray(response.embedding, dtype=np.float32)
        if len(response.embedding)
        else None,
        model_name=response.model_name,
        model_version=response.model_version,
        video=VideoInfo(
            width=v.width,
            height=v.height,
            duration=v.duration_s,
            fps=v.fps,
            codec=v.codec,
            rotation=v.rotation,
            frames_decoded=v.frames_decoded,
            sampled_timestamps=tuple(v.sampled_timestamps_s),
        ),
        timings={
            "decode": t.decode_ms / 1000.0,
            "preprocess": t.preprocess_ms / 1000.0,
            "inference": t.inference_ms / 1000.0,
            "postprocess": t.postprocess_ms / 1000.0,
            "queue": t.queue_ms / 1000.0,
            "decode_wait": t.decode_wait_ms / 1000.0,
            "transfer": t.transfer_ms / 1000.0,
            "batch_wait": t.batch_wait_ms / 1000.0,
            "total": t.total_ms / 1000.0,
            "batch_size": float(t.batch_size),  # a count, not seconds
        },
        all_scores=np.asarray(response.all_scores, dtype=np.float32),
    )


class VidtagClient:
    """A blocking client for one vidtag server; thread-safe, reuse one per target.

    `timeout` is the per-call deadline in seconds (None = wait forever). The client and server
    message limits must both fit the video: `max_message_bytes` sets the client's side.
    Errors the caller can act on come back as vidtag exceptions (`InvalidVideo` for a bad video,
    `ModelError` for an unknown model); every other failure is the `grpc.RpcError` itself.
    """

    def __init__(
        self,
        target: str,
        timeout: float | None = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        token: str | None = None,
        tls: bool = False,
        tls_ca_file: str | Path | None = None,
        tls_cert_file: str | Path | None = None,
        tls_key_file: str | Path | None = None,
        load_balancing: str | None = None,
    ) -> None:
        """`target`: any gRPC target: `host:port`, `dns:///host:port` (every address the
        name resolves to, e.g. the pods of a Kubernetes headless Service), or a fixed list
        `ipv4:10.0.0.1:50051,10.0.0.2:50051`.

        `token`: sent as `authorization: Bearer <token>` on every call (for servers run
        with --auth-token-file). `tls` (implied by any tls_* file): a TLS channel trusting
        `tls_ca_file` (default: the system roots); `tls_cert_file`/`tls_key_file` present a
        client certificate (mutual TLS).

        `load_balancing`: "round_robin" (one connection per resolved address, calls spread
        over the ready ones in turn) or "pick_first" (one connection); None picks
        round_robin for `dns:`, `ipv4:` and `ipv6:` targets and gRPC's default (pick_first)
        for a bare `host:port`."""
        self.target = target
        self.timeout = timeout
        self.load_balancing = (
            default_load_balancing(target) if load_balancing is None else load_balancing
        )
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        options: list[tuple[str, str | int]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if self.load_balancing is not None:
            options.append(("grpc.service_config", service_config(self.load_balancing)))
        if tls or tls_ca_file or tls_cert_file or tls_key_file:

            def read(p: str | Path | None) -> bytes | None:
                return Path(p).read_bytes() if p else None

            credentials = grpc.ssl_channel_credentials(
                root_certificates=read(tls_ca_file),
                private_key=read(tls_key_file),
                certificate_chain=read(tls_cert_file),
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.VideoTaggerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def tag(
        self,
        video: bytes | str | Path,
        top_k: int | None = None,
        threshold: float | None = None,
        return_embedding: bool = False,
        *,
        model_name: str = "",
        model_version: str = "",
        timeout: float | None = None,
        chunk_bytes: int | None = None,
    ) -> TagResult:
        """Tag one video given as encoded bytes or a local file path (str or Path).

        `top_k`/`threshold` left as None use the model's own policy; `timeout` (seconds), if
        given, replaces the client's default deadline for this call. With `chunk_bytes` the
        video is uploaded through TagVideoStream in chunks of that size (for clips above the
        server's unary message limit).
        """
        data = bytes(video if isinstance(video, bytes | bytearray) else Path(video).read_bytes())
        request = _request(top_k, threshold, return_embedding, model_name, model_version)
        if chunk_bytes:
            size = max(1, chunk_bytes)
            chunks = [
                pb.TagVideoChunk(options=request if i == 0 else None, data=data[i : i + size])
                for i in range(0, max(len(data), 1), size)
            ]
            return response_to_result(self._call(self._stub.TagVideoStream, iter(chunks), timeout))
        request.video = data
        return response_to_result(self._call(self._stub.TagVideo, request, timeout))

    def tag_path(
        self,
        path: str | Path,
        top_k: int | None = None,
        threshold: float | None = None,
        return_embedding: bool = False,
        *,
        model_name: str = "",
        model_version: str = "",
        timeout: float | None = None,
    ) -> TagResult:
        """Tag a video file the server reads from its own filesystem: `path` is a path on the
        server, not here, and no bytes are uploaded. Only servers started with
        `--allow-path-root` accept this, for files inside those roots; otherwise the call
        fails with PERMISSION_DENIED (a `grpc.RpcError`). Options as for `tag`."""
        request = _request(top_k, threshold, return_embedding, model_name, model_version)
        request.path = str(path)
        return response_to_result(self._call(self._stub.TagVideo, request, timeout))

    def model_info(
        self, model_name: str = "", model_version: str = "", *, timeout: float | None = None
    ) -> pb.ModelInfo:
        """The server's description of a model (empty name = its default model)."""
        request = pb.GetModelInfoRequest(model_name=model_name, model_version=model_version)
        return self._call(self._stub.GetModelInfo, request, timeout)

    def list_models(self, *, timeout: float | None = None) -> pb.ListModelsResponse:
        """Every model and version the server has loaded, and its default."""
        return self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            mapped = _as_vidtag_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The `grpc.health.v1` status name: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN", ...

        `service=""` asks about the server as a whole; "vidtag.v1.VideoTagger" about tagging.
        """
        response = self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self._timeout(timeout)
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VidtagClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout


def _as_vidtag_error(exc: grpc.RpcError) -> Exception | None:
    """The vidtag exception a status code stands for, or None to re-raise the RpcError."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidVideo(exc.details() or "invalid argument")
    if code is grpc.StatusCode.NOT_FOUND:
        return ModelError(exc.details() or "model not found")
    return None


def _request(
    top_k: int | None,
    threshold: float | None,
    return_embedding: bool,
    model_name: str,
    model_version: str,
) -> pb.TagVideoRequest:
    """A TagVideoRequest with the options set (None leaves an option to the model)."""
    request = pb.TagVideoRequest(
        return_embedding=return_embedding, model_name=model_name, model_version=model_version
    )
    if top_k is not None:
        request.top_k = top_k
    if threshold is not None:
        request.threshold = threshold
    return request
