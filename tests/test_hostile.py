"""Hostile uploads against a running server: each one gets tags or INVALID_ARGUMENT with a
reason within 2 s, and the server stays SERVING and keeps answering good requests."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import grpc
import numpy as np
import pytest
from media import encode_clip
from PIL import Image
from test_server import make_config

from vidtag.client.grpc_client import VidtagClient
from vidtag.errors import InvalidVideo
from vidtag.server.background import running_server


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _audio_only() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        sound = out.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 16000), np.float32), format="flt", layout="mono"
        )
        frame.sample_rate, frame.pts = 16000, 0
        for pkt in [*sound.encode(frame), *sound.encode()]:
            out.mux(pkt)
    return buf.getvalue()


def _long_tiny_clip(seconds: int) -> bytes:
    """16x16 at 1 fps for `seconds`: cheap to make, longer than any duration limit."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=1)
        s.width = s.height = 16
        s.options = {"preset": "ultrafast", "g": "600"}
        img = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for i in range(seconds):
            img.pts, img.time_base = i, Fraction(1, 1)
            for pkt in s.encode(img):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("hostile")
    return encode_clip(d / "good.mp4", seconds=3.0).read_bytes()


@pytest.fixture(scope="module")
def client(model_repo: Path) -> Iterator[VidtagClient]:
    with (
        running_server(make_config(model_repo)) as (srv, _),
        VidtagClient(f"127.0.0.1:{srv.port}", timeout=10) as c,
    ):
        yield c


CASES: dict[str, Callable[[bytes], bytes]] = {
    "random bytes": lambda g: np.random.default_rng(0).bytes(200_000),
    "png image": lambda g: _png(),
    "audio only": lambda g: _audio_only(),
    "truncated 10 %": lambda g: g[: len(g) // 10],
    "truncated 50 %": lambda g: g[: len(g) // 2],
    "truncated 90 %": lambda g: g[: len(g) * 9 // 10],
    "header only": lambda g: g[:64],
    "valid header, garbage payload": lambda g: g[:48] + np.random.default_rng(1).bytes(len(g) - 48),
    "two files concatenated": lambda g: g + g,
    "one hour long": lambda g: _long_tiny_clip(3600),
    "mp4 suffix on text": lambda g: b"this is not a video\n" * 100,
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_gets_tags_or_a_reason_fast(
    client: VidtagClient, good: bytes, case: str
) -> None:
    data = CASES[case](good)
    t0 = time.monotonic()
    try:
        result = client.tag(data)
        assert result.tags  # decodable after all: it got real tags
    except InvalidVideo as exc:
        assert str(exc)  # the reason travels with the status
    except grpc.RpcError as exc:  # pragma: no cover - would be a bug; show it
        pytest.fail(f"{case}: {exc.code().name} {exc.details()}")
    assert time.monotonic() - t0 < 2.0, case
    assert client.health() == "SERVING"
    assert client.tag(good).tags  # and good requests still work


def test_the_hour_long_clip_is_refused_for_its_duration(client: VidtagClient) -> None:
    with pytest.raises(InvalidVideo, match="duration"):
        client.tag(_long_tiny_clip(3600))
