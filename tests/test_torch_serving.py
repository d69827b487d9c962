"""`vidtag serve --device cpu --runtime torch` end to end over gRPC: the bundled model run by the
PyTorch runtime (buckets, static buffers, the batcher's worker thread) tags clips as ONNX
Runtime does, and health, errors and metrics behave as on the default path."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vidtag.client.grpc_client import VidtagClient
from vidtag.errors import InvalidVideo
from vidtag.runtime.repository import default_repository, resolve_model
from vidtag.runtime.tagger import Tagger
from vidtag.runtime.torch_backend import TorchBackend
from vidtag.server.app import VidtagServer
from vidtag.server.background import running_server
from vidtag.server.config import ServeConfig

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def server() -> Iterator[VidtagServer]:
    config = ServeConfig(
        host="127.0.0.1",
        port=0,
        model_repository=default_repository(),
        model_name="stb1",
        device="cpu",
        runtime="torch",
        max_batch_size=4,
        metrics_port=0,
        repository_poll_s=0,
    )
    with running_server(config) as (srv, _):
        yield srv


def test_torch_runtime_tags_like_onnx_runtime(
    server: VidtagServer, h264_clip: Path, single_key_clip: Path
) -> None:
    model = server.models.get()
    assert isinstance(model.tagger.backend, TorchBackend)
    assert model.tagger.backend.buckets == (1, 2, 4)
    reference = Tagger(resolve_model(default_repository(), "stb1"))  # ONNX Runtime
    newest = str(max(int(p.name) for p in (default_repository() / "stb1").iterdir()))
    with VidtagClient(f"127.0.0.1:{server.port}", timeout=30) as client:
        for path in (h264_clip, single_key_clip):
            got = client.tag(path, return_embedding=True)
            want = reference.tag(path)
            assert got.model_version == want.model_version == newest
            assert [t.name for t in got.tags] == [t.name for t in want.tags]
            assert len(got.tags) >= 1
            np.testing.assert_allclose(got.all_scores, want.all_scores, atol=1e-4)
            assert got.embedding is not None
            np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-4)


def test_health_errors_and_metrics_as_on_the_default_path(
    server: VidtagServer, clip_bytes: bytes
) -> None:
    target = f"127.0.0.1:{server.port}"
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with VidtagClient(target, timeout=30) as client:
        client.tag(clip_bytes)
        with pytest.raises(InvalidVideo):
            client.tag(b"not a video" * 100)
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    deadline = time.monotonic() + 5
    while True:  # the in-flight gauge settles just after the client sees the status
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        if "vidtag_in_flight_requests 0.0" in text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    ok = 'vidtag_requests_total{method="TagVideo",status="OK"}'
    bad = 'vidtag_requests_total{method="TagVideo",status="INVALID_ARGUMENT"}'
    counts = {
        key: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        for key in (ok, bad)
        if line.startswith(key)
    }
    assert counts[ok] >= 1 and counts[bad] >= 1
    assert 'vidtag_stage_seconds_count{stage="inference"}' in text


def test_decode_workers_send_uint8_frames(h264_clip: Path) -> None:
    """Decode workers send frames (uint8), not the float32 input; the input is normalised on the
    torch device, or on the host, as `preprocess` defines."""
    import asyncio

    import torch

    from vidtag.decode import DecodeLimits, sample_frames
    from vidtag.runtime.preprocess import preprocess
    from vidtag.server.decode_pool import DecodedResult
    from vidtag.server.pipeline import pool_decode_stage

    tagger = Tagger(resolve_model(default_repository(), "stb1"))
    clip = sample_frames(h264_clip, tagger.spec)
    asked = []

    class Pool:
        busy = pending = 0

        async def decode(self, data: bytes, spec: Any, limits: Any, deadline: Any) -> DecodedResult:
            asked.append(deadline)
            return DecodedResult(clip, time.monotonic())

    model = type("M", (), {"tagger": tagger, "meta": tagger.meta})()
    got = asyncio.run(
        pool_decode_stage(Pool(), DecodeLimits(), "cpu")(b"", model, None)  # type: ignore[arg-type]
    ).x
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), preprocess(clip.frames, tagger.meta.input), atol=1e-6)
    host = asyncio.run(pool_decode_stage(Pool(), DecodeLimits())(b"", model, None)).x  # type: ignore[arg-type]
    # The ONNX path also gets uint8 frames through the pipe and normalises them on the host.
    assert asked == [None, None] and isinstance(host, np.ndarray)
    np.testing.assert_array_equal(host, preprocess(clip.frames, tagger.meta.input))
