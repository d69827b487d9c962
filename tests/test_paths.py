"""Server-side path inputs: off by default; with roots, confined to them after resolving `..`
and symbolic links; regular files only; no URLs; the content, not the name, decides."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from media import encode_clip
from test_server import make_config

from vidtag.client.grpc_client import VidtagClient
from vidtag.decode import SamplingSpec, sample_frames
from vidtag.decode.source import FileRef
from vidtag.errors import InvalidVideo
from vidtag.server.background import running_server
from vidtag.server.cli import add_serve_arguments, config_from_args
from vidtag.server.config import ServeConfig
from vidtag.server.errors import RpcFailure
from vidtag.server.paths import PathInputs


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """root/ (allowed) and outside/ (not), with clips, decoys and links."""
    base = tmp_path_factory.mktemp("paths")
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    clip = encode_clip(root / "clip.mp4", seconds=2.0)
    data = clip.read_bytes()
    (outside / "secret.mp4").write_bytes(data)
    (root / "notes.txt").write_bytes(data)  # a video under a text name
    (root / "fake.mp4").write_text("not a video\n" * 50)  # text under a video name
    (root / "sub" / "inside_link.mp4").symlink_to(clip)
    (root / "escape.mp4").symlink_to(outside / "secret.mp4")
    (root / "zero").symlink_to("/dev/zero")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "fifo.mp4")
    return {"root": root, "outside": outside, "clip": clip}


@pytest.fixture(scope="module")
def client(model_repo: Path, tree: dict[str, Path]) -> Iterator[VidtagClient]:
    config = make_config(model_repo, allowed_path_roots=(tree["root"],))
    with (
        running_server(config) as (srv, _),
        VidtagClient(f"127.0.0.1:{srv.port}", timeout=20) as c,
    ):
        yield c


def _code(client: VidtagClient, path: str | Path) -> tuple[grpc.StatusCode, str]:
    try:
        client.tag_path(path)
    except InvalidVideo as exc:
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_path_inputs_are_off_by_default(model_repo: Path, tree: dict[str, Path]) -> None:
    assert ServeConfig().allowed_path_roots == ()
    config = make_config(model_repo, workers=1, decode_processes=False)
    with (
        running_server(config) as (srv, _),
        VidtagClient(f"127.0.0.1:{srv.port}", timeout=20) as c,
    ):
        code, reason = _code(c, tree["clip"])
        assert code is grpc.StatusCode.PERMISSION_DENIED and "disabled" in reason
        assert c.tag(tree["clip"].read_bytes()).tags  # uploads are unaffected


def test_a_file_inside_a_root_is_tagged_like_its_upload(
    client: VidtagClient, tree: dict[str, Path]
) -> None:
    by_path = client.tag_path(tree["clip"])
    uploaded = client.tag(tree["clip"].read_bytes())
    assert by_path.tags and by_path.video.codec == "h264"
    np.testing.assert_allclose(by_path.all_scores, uploaded.all_scores, atol=1e-5)
    # A link that stays inside the root is fine: where it leads is what counts.
    assert client.tag_path(tree["root"] / "sub" / "inside_link.mp4").tags


@pytest.mark.parametrize(
    "relative",
    [
        "../outside/secret.mp4",
        "sub/../../outside/secret.mp4",
        "escape.mp4",  # a link inside the root to a file outside
        "dirlink/secret.mp4",  # through a linked directory
        "zero",  # a link to /dev/zero
        "../outside/missing.mp4",  # outside: refused the same whether it exists or not
    ],
)
def test_escapes_from_the_root_are_denied(
    client: VidtagClient, tree: dict[str, Path], relative: str
) -> None:
    code, reason = _code(client, f"{tree['root']}/{relative}")
    assert code is grpc.StatusCode.PERMISSION_DENIED and "outside" in reason


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/dev/zero", "outside"),
        ("/etc/passwd", "outside"),
        ("http://127.0.0.1/clip.mp4", "URLs are not fetched"),
        ("file:///etc/passwd", "URLs are not fetched"),
        ("clip.mp4", "absolute"),
    ],
)
def test_other_paths_are_refused(client: VidtagClient, path: str, reason: str) -> None:
    code, details = _code(client, path)
    assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
    assert reason in details


@pytest.mark.parametrize(
    ("relative", "reason"),
    [("sub", "not a regular file"), ("fifo.mp4", "not a regular file"), ("gone.mp4", "no such")],
)
def test_only_regular_files_inside_the_root(
    client: VidtagClient, tree: dict[str, Path], relative: str, reason: str
) -> None:
    code, details = _code(client, tree["root"] / relative)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and reason in details


def test_the_content_decides_not_the_name(client: VidtagClient, tree: dict[str, Path]) -> None:
    assert client.tag_path(tree["root"] / "notes.txt").tags
    with pytest.raises(InvalidVideo, match="not a readable video container"):
        client.tag_path(tree["root"] / "fake.mp4")


def test_video_and_path_together_are_refused(client: VidtagClient, tree: dict[str, Path]) -> None:
    from vidtag.v1 import tagger_pb2 as pb

    request = pb.TagVideoRequest(video=tree["clip"].read_bytes(), path=str(tree["clip"]))
    with pytest.raises(InvalidVideo, match="either video or path"):
        client._call(client._stub.TagVideo, request, None)


def test_files_over_the_upload_cap_are_refused(tree: dict[str, Path]) -> None:
    size = tree["clip"].stat().st_size
    assert PathInputs([tree["root"]], size).check(str(tree["clip"])).size == size
    with pytest.raises(RpcFailure) as info:
        PathInputs([tree["root"]], size - 1).check(str(tree["clip"]))
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_check_names_the_real_file_and_reads_nothing(tree: dict[str, Path]) -> None:
    clip = tree["clip"]
    ref = PathInputs([tree["root"]], 1 << 30).check(str(tree["root"] / "sub" / "inside_link.mp4"))
    info = clip.stat()
    assert ref == FileRef(str(clip), info.st_dev, info.st_ino, info.st_size)


def test_a_file_replaced_after_its_check_is_not_decoded(tmp_path: Path) -> None:
    """The decoder opens a checked file itself: if the name now leads elsewhere (a link, a
    renamed file) or nowhere, it refuses instead of decoding what it was not asked to."""
    clip = encode_clip(tmp_path / "a.mp4", seconds=1.0)
    inputs = PathInputs([tmp_path], 1 << 30)
    ref = inputs.check(str(clip))
    assert sample_frames(ref, SamplingSpec(frames=2, height=16, width=16)).frames.shape[0] == 2
    other = encode_clip(tmp_path / "b.mp4", seconds=1.0)
    os.replace(other, clip)  # same name, another file
    with pytest.raises(InvalidVideo, match="replaced after it was checked"):
        sample_frames(ref, SamplingSpec(frames=2, height=16, width=16))
    clip.unlink()
    clip.symlink_to("/etc/passwd")
    with pytest.raises(InvalidVideo, match="changed after it was checked"):
        sample_frames(ref, SamplingSpec(frames=2, height=16, width=16))


def test_in_process_decoders_read_paths_too(model_repo: Path, tree: dict[str, Path]) -> None:
    config = make_config(
        model_repo, workers=1, decode_processes=False, allowed_path_roots=(tree["root"],)
    )
    with (
        running_server(config) as (srv, _),
        VidtagClient(f"127.0.0.1:{srv.port}", timeout=20) as c,
    ):
        by_path = c.tag_path(tree["clip"])
        np.testing.assert_allclose(
            by_path.all_scores, c.tag(tree["clip"].read_bytes()).all_scores, atol=1e-5
        )


def test_a_device_is_not_a_regular_file_even_inside_a_root() -> None:
    with pytest.raises(RpcFailure, match="not a regular file"):
        PathInputs([Path("/dev")], 1024).check("/dev/zero")


def test_roots_come_from_flags_environment_and_files(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--allow-path-root", "/data/a", "--allow-path-root", "/data/b"])
    assert config_from_args(args, env={}).allowed_path_roots == (Path("/data/a"), Path("/data/b"))
    env = {"VIDTAG_ALLOWED_PATH_ROOTS": f"/srv/x{os.pathsep}/srv/y"}
    assert config_from_args(parser.parse_args([]), env=env).allowed_path_roots == (
        Path("/srv/x"),
        Path("/srv/y"),
    )
    (tmp_path / "c.toml").write_text('allowed_path_roots = ["/mnt/v"]\n')
    args = parser.parse_args(["--config", str(tmp_path / "c.toml")])
    assert config_from_args(args, env={}).allowed_path_roots == (Path("/mnt/v"),)
    assert config_from_args(parser.parse_args([]), env={}).allowed_path_roots == ()
    with pytest.raises(ValueError, match="absolute"):
        ServeConfig(allowed_path_roots=(Path("relative/dir"),))
