"""The Python client and `vidtag tag`: remote results equal in-process ones; CLI output formats."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from vidtag.client.cli import add_tag_arguments, run_tag
from vidtag.client.grpc_client import VidtagClient
from vidtag.errors import InvalidVideo
from vidtag.runtime.tagger import Tagger
from vidtag.server.background import running_server
from vidtag.server.config import ServeConfig

MODEL_NAME = "tiny"


@pytest.fixture(scope="module")
def clip_path(h264_clip: Path) -> Path:
    return h264_clip


@pytest.fixture(scope="module")
def model_dir(model_repo: Path) -> Path:
    return model_repo / MODEL_NAME / "1"


@pytest.fixture(scope="module")
def target(model_dir: Path) -> Iterator[str]:
    """`host:port` of a SERVING server, its event loop on a background thread."""
    config = ServeConfig(
        host="127.0.0.1",
        port=0,
        model_repository=model_dir.parents[1],
        model_name=MODEL_NAME,
        metrics_port=0,
    )
    with running_server(config) as (server, _):
        yield f"127.0.0.1:{server.port}"


# ---------------------------------------------------------------- library


def test_remote_result_equals_in_process(target: str, model_dir: Path, clip_path: Path) -> None:
    local = Tagger(model_dir).tag(clip_path, threshold=0.0)
    with VidtagClient(target, timeout=30) as client:
        assert client.health() == "SERVING"
        by_path = client.tag(clip_path, threshold=0.0, return_embedding=True)
        by_str = client.tag(str(clip_path), threshold=0.0)
        by_bytes = client.tag(clip_path.read_bytes(), threshold=0.0)
    for remote in (by_path, by_str, by_bytes):
        assert remote.tags == local.tags  # float32 scores survive the wire exactly
        assert remote.video == local.video
        assert (remote.model_name, remote.model_version) == (local.model_name, local.model_version)
        np.testing.assert_array_equal(remote.all_scores, local.all_scores)
        assert set(remote.timings) >= {"decode", "preprocess", "inference", "postprocess", "total"}
    assert by_path.embedding is not None and local.embedding is not None
    np.testing.assert_allclose(by_path.embedding, local.embedding, rtol=0, atol=1e-6)
    assert by_str.embedding is None


def test_client_errors(target: str, tmp_path: Path) -> None:
    with VidtagClient(target, timeout=30) as client:
        with pytest.raises(InvalidVideo):
            client.tag(b"\x00" * 1000)
        with pytest.raises(FileNotFoundError):
            client.tag(tmp_path / "missing.mp4")
    with VidtagClient("127.0.0.1:1", timeout=2) as dead, pytest.raises(grpc.RpcError) as err:
        dead.health()
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------- `vidtag tag`


def _run(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="vidtag tag")
    add_tag_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = run_tag(parser.parse_args(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_json_over_grpc(target: str, clip_path: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 50)
    code, out, err = _run(
        [
            str(clip_path),
            str(junk),
            "--server",
            target,
            "--json",
            "--top-k",
            "2",
            "--threshold",
            "0",
        ]
    )
    assert code == 1  # one clip failed; the other was still tagged
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["path"] == str(clip_path) and first["model_name"] == MODEL_NAME
    assert len(first["tags"]) == 2 and set(first["tags"][0]) == {"name", "score", "group"}
    assert first["tags"][0]["score"] >= first["tags"][1]["score"]
    assert first["video"]["width"] == 160 and first["video"]["codec"] == "h264"
    assert first["timings_ms"]["total"] > 0 and "embedding" not in first
    stages = {"decode", "preprocess", "inference", "postprocess", "queue", "total"}
    assert stages | {"decode_wait", "transfer", "batch_wait"} == set(first["timings_ms"])
    assert first["batch_size"] == 1  # a count, not among the timings
    assert second["path"] == str(junk) and second["error"]["type"] == "InvalidVideo"
    assert str(junk) in err


def test_cli_in_process_matches_server(target: str, clip_path: Path, model_dir: Path) -> None:
    argv = [str(clip_path), "--json", "--threshold", "0.3", "--embedding"]
    code_local, out_local, _ = _run([*argv, "--model", str(model_dir)])
    code_remote, out_remote, _ = _run([*argv, "--server", target])
    assert code_local == code_remote == 0
    local, remote = json.loads(out_local), json.loads(out_remote)
    assert local["tags"] == remote["tags"]
    assert len(local["embedding"]) == len(remote["embedding"]) > 0


def test_cli_table(target: str, clip_path: Path) -> None:
    code, out, _ = _run([str(clip_path), str(clip_path), "--server", target, "--top-k", "3"])
    assert code == 0
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 2
    header, columns, *rows = blocks[0].splitlines()
    assert str(clip_path) in header and "160x288" in header and MODEL_NAME in header
    assert columns.split() == ["#", "tag", "group", "score"] and len(rows) == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["x.mp4", "--server", "h:1", "--model", "some/dir"],
        ["x.mp4", "--threshold", "2"],
        ["x.mp4", "--top-k", "0"],
    ],
)
def test_cli_usage_errors(argv: list[str]) -> None:
    code, out, err = _run(argv)
    assert code == 2 and not out and err.startswith("vidtag tag:")
