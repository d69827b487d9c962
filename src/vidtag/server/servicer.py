"""The VideoTagger servicer: protobuf <-> domain translation around the served models' pipeline.

Numerics (decode, preprocessing, inference, thresholds, ranking) all live in `vidtag.runtime`;
this module picks the model, moves the blocking call off the event loop, maps errors to status
codes and writes one access-log line per RPC.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from vidtag.decode.source import FileRef
from vidtag.errors import ModelError
from vidtag.runtime.repository import version_key
from vidtag.server.errors import RpcFailure, abort_with, status_for
from vidtag.server.metrics import Metrics
from vidtag.server.paths import PathInputs
from vidtag.v1 import tagger_pb2 as pb
from vidtag.v1 import tagger_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from vidtag.runtime.artifact import ArtifactMeta
    from vidtag.runtime.tagger import TagResult
    from vidtag.server.pipeline import DecodeStage, ServedModel

access_log = logging.getLogger("vidtag.server.access")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VideoTagger"].full_name


class ModelSet:
    """The models this server has loaded, looked up by the (name, version) a request names.

    An empty name means the default model; an empty version means the highest version loaded
    under that name (so a new version picked up from the repository takes over at once).
    Asking before any model is loaded is UNAVAILABLE, asking for one that is not loaded is a
    `ModelError` (NOT_FOUND).
    """

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], ServedModel] = {}
        self._default_name: str | None = None
        self._latest: dict[str, ServedModel | None] = {}  # by name; every request asks

    def add(self, model: ServedModel, *, default: bool = False) -> None:
        self._by_key[(model.name, model.version)] = model
        self._latest.clear()
        if default or self._default_name is None:
            self._default_name = model.name

    @property
    def ready(self) -> bool:
        return self._default_name is not None

    def loaded(self) -> list[tuple[str, str]]:
        return sorted(self._by_key, key=lambda k: (k[0], version_key(k[1])))

    def all(self) -> list[ServedModel]:
        return [self._by_key[k] for k in self.loaded()]

    def latest(self, name: str) -> ServedModel | None:
        if name not in self._latest:
            versions = [k for k in self.loaded() if k[0] == name]
            self._latest[name] = self._by_key[versions[-1]] if versions else None
        return self._latest[name]

    def get(self, name: str = "", version: str = "") -> ServedModel:
        if self._default_name is None:
            raise RpcFailure(
                grpc.StatusCode.UNAVAILABLE, "no model loaded yet; retry when health is SERVING"
            )
        if not name:
            name = self._default_name
        found = self._by_key.get((name, version)) if version else self.latest(name)
        if found is None:
            wanted = f"{name!r}" + (f" version {version!r}" if version else "")
            have = ", ".join(f"{n}/{v}" for n, v in self.loaded())
            raise ModelError(f"model {wanted} is not loaded (serving: {have})")
        return found


@dataclass
class _Access:
    """One RPC's access-log record; never holds payload bytes."""

    method: str
    peer: str
    nbytes: int
    status: str = "OK"
    model: str = "-"


@contextmanager
def _access_logged(
    method: str, context: grpc.aio.ServicerContext, nbytes: int, metrics: Metrics
) -> Iterator[_Access]:
    rec = _Access(method=method, peer=context.peer(), nbytes=nbytes)
    t0 = time.perf_counter()
    try:
        yield rec
    except asyncio.CancelledError:
        rec.status = "CANCELLED"
        raise
    finally:
        ms = (time.perf_counter() - t0) * 1000.0
        metrics.requests.labels(method, rec.status).inc()
        access_log.info(
            "rpc method=%s status=%s ms=%.1f bytes=%d model=%s peer=%s",
            rec.method,
            rec.status,
            ms,
            rec.nbytes,
            rec.model,
            rec.peer,
        )


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on the monotonic clock; DEADLINE_EXCEEDED if it already passed."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    if remaining <= 0:
        raise RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before work began")
    return time.monotonic() + remaining


def request_options(request: pb.TagVideoRequest) -> tuple[int | None, float | None]:
    """`(top_k, threshold)` for the decision rule; None where the request leaves it to the model."""
    top_k = request.top_k if request.HasField("top_k") and request.top_k > 0 else None
    threshold: float | None = None
    if request.HasField("threshold"):
        threshold = float(request.threshold)
        if math.isnan(threshold) or not 0.0 <= threshold <= 1.0:
            raise RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT, f"threshold must be in [0, 1], got {threshold}"
            )
    return top_k, threshold


def result_to_proto(result: TagResult, *, return_embedding: bool) -> pb.TagVideoResponse:
    """Translate a domain `TagResult` (timings in seconds) to the wire response (ms)."""
    v = result.video
    t = result.timings
    response = pb.TagVideoResponse(
        tags=[pb.Tag(name=s.name, score=s.score, group=s.group) for s in result.tags],
        model_name=result.model_name,
        model_version=result.model_version,
        video=pb.VideoInfo(
            width=v.width,
            height=v.height,
            duration_s=v.duration,
            fps=v.fps,
            codec=v.codec,
            rotation=v.rotation,
            frames_decoded=v.frames_decoded,
            sampled_timestamps_s=list(v.sampled_timestamps),
        ),
        timings=pb.Timings(
            decode_ms=t.get("decode", 0.0) * 1000.0,
            preprocess_ms=t.get("preprocess", 0.0) * 1000.0,
            inference_ms=t.get("inference", 0.0) * 1000.0,
            postprocess_ms=t.get("postprocess", 0.0) * 1000.0,
            total_ms=t.get("total", 0.0) * 1000.0,
            queue_ms=t.get("queue", 0.0) * 1000.0,
            decode_wait_ms=t.get("decode_wait", 0.0) * 1000.0,
            transfer_ms=t.get("transfer", 0.0) * 1000.0,
            batch_wait_ms=t.get("batch_wait", 0.0) * 1000.0,
        ),
    )
    response.all_scores.extend(result.all_scores.tolist())
    if return_embedding and result.embedding is not None:
        response.embedding.extend(result.embedding.tolist())
    return response


def meta_to_proto(meta: ArtifactMeta) -> pb.ModelInfo:
    """Translate a model artifact's metadata to the wire `ModelInfo`."""
    group_of = {t: g for g, ts in meta.groups.items() for t in ts}
    return pb.ModelInfo(
        model_name=meta.name,
        model_version=meta.version,
        tags=[
            pb.TagInfo(name=t, group=group_of.get(t, ""), threshold=thr)
            for t, thr in zip(meta.tags, meta.thresholds, strict=True)
        ],
        embedding_dim=meta.embedding_size,
        default_top_k=meta.top_k,
        num_frames=meta.input.frames,
        input_height=meta.input.height,
        input_width=meta.input.width,
    )


class VideoTaggerServicer(pb_grpc.VideoTaggerServicer):
    """grpc.aio implementation of `vidtag.v1.VideoTagger`.

    Per request: `decode` (bytes -> preprocessed input, off the event loop; a request whose
    deadline passed while it waited is dropped there), then the model's dynamic batcher, then the
    decision rule. The response's timings split the server-side time into decode, queue
    (waiting for a decoder and for a batch), inference and postprocess.
    """

    def __init__(
        self,
        models: ModelSet,
        decode: DecodeStage,
        max_stream_bytes: int = 256 * 1024 * 1024,
        metrics: Metrics | None = None,
        paths: PathInputs | None = None,
    ) -> None:
        self.models = models
        self.metrics = metrics or Metrics()
        self._decode = decode
        self.max_stream_bytes = max_stream_bytes
        self.paths = paths or PathInputs((), max_stream_bytes)  # no roots: paths refused
        self.in_flight = 0  # TagVideo calls accepted and not yet answered

    async def TagVideo(
        self, request: pb.TagVideoRequest, context: grpc.aio.ServicerContext
    ) -> pb.TagVideoResponse:
        return await self._tag("TagVideo", request, request.video, context)

    async def TagVideoStream(
        self, request_iterator: AsyncIterator[pb.TagVideoChunk], context: grpc.aio.ServicerContext
    ) -> pb.TagVideoResponse:
        options: pb.TagVideoRequest | None = None
        parts: list[bytes] = []
        total = 0
        try:
            async for chunk in request_iterator:
                if options is None:
                    options = chunk.options
                total += len(chunk.data)
                if total > self.max_stream_bytes:
                    raise RpcFailure(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"upload exceeds the server's cap of {self.max_stream_bytes} bytes",
                    )
                parts.append(chunk.data)
        except RpcFailure as exc:
            with _access_logged("TagVideoStream", context, total, self.metrics) as rec:
                rec.status = exc.code.name
                await abort_with(context, exc, method="TagVideoStream")
        video = b"".join(parts)
        del parts
        return await self._tag("TagVideoStream", options or pb.TagVideoRequest(), video, context)

    async def _tag(
        self,
        method: str,
        request: pb.TagVideoRequest,
        video: bytes,
        context: grpc.aio.ServicerContext,
    ) -> pb.TagVideoResponse:
        self.in_flight += 1
        self.metrics.in_flight.inc()
        t_rpc = time.monotonic()  # the clock of the decode stage's stamps
        try:
            with _access_logged(method, context, len(video), self.metrics) as rec:
                try:
                    deadline = _deadline(context)
                    if request.path:
                        if video:
                            raise RpcFailure(
                                grpc.StatusCode.INVALID_ARGUMENT,
                                "set either video or path, not both",
                            )
                        # Checked here, read by the decoder: only the bytes it needs, in its
                        # process, not piped there.
                        ref = await asyncio.to_thread(self.paths.check, request.path)
                        source: bytes | FileRef = ref
                        rec.nbytes = ref.size
                    else:
                        source = video
                    if not rec.nbytes:
                        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "video is empty")
                    top_k, threshold = request_options(request)
                    model = self.models.get(request.model_name, request.model_version)
                    rec.model = f"{model.name}/{model.version}"
                    decoded = await self._decode(source, model, deadline)
                    self.metrics.decode_shares.labels(str(decoded.shares)).inc()
                    scores, emb, batch, infer_s, began = await model.batcher.submit(
                        decoded.x, deadline
                    )
                    t_inferred = time.monotonic()
                    timings = decoded.stages(t_rpc)
                    timings["batch_wait"] = max(float(began[()]) - decoded.ready, 0.0)
                    timings["inference"] = float(infer_s[()])
                    worked = timings["decode"] + timings["preprocess"] + timings["inference"]
                    timings["queue"] = t_inferred - t_rpc - worked
                    result = model.tagger.result(
                        decoded.clip, scores, emb, timings, top_k, threshold
                    )
                    t_done = time.monotonic()
                    timings.update(postprocess=t_done - t_inferred, total=t_done - t_rpc)
                    self.metrics.observe_stages(timings)
                    response = result_to_proto(result, return_embedding=request.return_embedding)
                    response.timings.batch_size = int(batch[()])
                    return response
                except Exception as exc:
                    rec.status = status_for(exc)[0].name
                    await abort_with(context, exc, method=method)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        with _access_logged("ListModels", context, 0, self.metrics):
            default = self.models.get() if self.models.ready else None
            return pb.ListModelsResponse(
                models=[meta_to_proto(t.meta) for t in self.models.all()],
                default_model_name=default.name if default else "",
                default_model_version=default.version if default else "",
            )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        with _access_logged("GetModelInfo", context, 0, self.metrics) as rec:
            try:
                model = self.models.get(request.model_name, request.model_version)
                rec.model = f"{model.name}/{model.version}"
                return meta_to_proto(model.meta)
            except Exception as exc:
                rec.status = status_for(exc)[0].name
                await abort_with(context, exc, method="GetModelInfo")
