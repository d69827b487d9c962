"""`vidtag bench`: closed- and open-loop steps against an in-process server, the reports, the
Poisson schedule and the synth clip cache."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vidtag.client.bench import (
    CallOptions,
    Clip,
    Plan,
    add_bench_arguments,
    parse_clip_spec,
    poisson_schedule,
    run_bench,
    run_plan,
    server_timings,
    synth_clips,
)
from vidtag.server.background import running_server
from vidtag.server.config import ServeConfig
from vidtag.v1 import tagger_pb2 as pb

MODEL_NAME = "tiny"


@pytest.fixture(scope="module")
def target(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server that also reads clips by path anywhere under this session's temporary files."""
    config = ServeConfig(
        host="127.0.0.1",
        port=0,
        model_repository=model_repo,
        model_name=MODEL_NAME,
        allowed_path_roots=(tmp_path_factory.getbasetemp(),),
    )
    with running_server(config) as (server, _):
        yield f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def clips(h264_clip: Path, single_key_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small clips and a garbage one, in name order a.mp4, b.mp4, c-junk.mp4."""
    d = tmp_path_factory.mktemp("bench-clips")
    shutil.copy(h264_clip, d / "a.mp4")
    shutil.copy(single_key_clip, d / "b.mp4")
    (d / "c-junk.mp4").write_bytes(b"not a video" * 100)
    (d / "notes.txt").write_text("ignored: not a video suffix")
    return d


def _run(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="vidtag bench")
    add_bench_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = run_bench(parser.parse_args(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_closed_and_open_loop(target: str, clips: Path, tmp_path: Path) -> None:
    report, png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["--server", target, "--clips", str(clips), "--concurrency", "2", "--requests", "6"]
    argv += ["--rate", "5", "--duration", "1", "--seed", "3", "--warmup", "1", "--quiet"]
    code, out, err = _run([*argv, "--json", str(report), "--png", str(png)])
    assert code == 0, err

    doc = json.loads(report.read_text())
    assert doc["server"] == target
    assert [c["name"] for c in doc["clips"]] == ["a.mp4", "b.mp4", "c-junk.mp4"]
    closed, opened = doc["steps"]
    # Closed loop: requests 0..5 cycle a, b, junk: the junk clip fails twice, counted not raised.
    assert (closed["mode"], closed["concurrency"], closed["requests"]) == ("closed", 2, 6)
    assert closed["ok"] == 4 and closed["errors"] == {"INVALID_ARGUMENT": 2}
    assert closed["raw"]["clip"] == list(range(6))
    assert closed["raw"]["status"].count("OK") == 4
    # Open loop: exactly the scheduled requests, sent no earlier than due.
    n_open = len(poisson_schedule(5, 1.0, 3))
    assert (opened["mode"], opened["rate"], opened["requests"]) == ("open", 5.0, n_open)
    assert opened["ok"] + sum(opened["errors"].values()) == n_open
    assert all(s >= d for s, d in zip(opened["raw"]["sent_s"], opened["raw"]["due_s"], strict=True))
    for step in (closed, opened):
        lat = step["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert step["throughput_clips_s"] > 0 and step["wall_s"] > 0
        srv = step["server_ms"]
        assert srv["total_ms"] > 0 and srv["decode_ms"] > 0 and srv["inference_ms"] > 0
        assert srv["other_ms"] == pytest.approx(
            srv["total_ms"] - srv["decode_ms"] - srv["inference_ms"]
        )
        assert len(step["raw"]["latency_ms"]) == step["requests"]
        assert "server.total_ms" in step["raw"]

    assert "closed c=2: 6 requests, 4 ok, 2 failed" in out
    assert "INVALID_ARGUMENT 2" in out and "p99" in out
    assert "clips/s" in out.split("\n\n")[-1]  # the final table of a multi-step run
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_path_input_tags_like_bytes(target: str, clips: Path, tmp_path: Path) -> None:
    """`--input path`: the server reads each clip from its file; no request fails and every
    clip gets the tags its upload gets. The reports say which input was used."""
    good = tmp_path / "good"
    good.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(clips / name, good / name)
    docs, outs = {}, {}
    for mode in ("bytes", "path"):
        argv = ["--server", target, "--clips", str(good), "--concurrency", "2", "--requests", "4"]
        argv += ["--rate", "4", "--duration", "0.5", "--warmup", "0", "--quiet"]
        report = tmp_path / f"{mode}.json"
        code, outs[mode], err = _run([*argv, "--input", mode, "--json", str(report)])
        assert code == 0, err
        docs[mode] = json.loads(report.read_text())

    path = docs["path"]
    assert path["input"] == "path" and path["args"]["input"] == "path"
    assert [c["path"] for c in path["clips"]] == [str(good / "a.mp4"), str(good / "b.mp4")]
    assert "input path (the server reads" in outs["path"].splitlines()[0]
    assert "input bytes (each clip uploaded" in outs["bytes"].splitlines()[0]
    table = outs["path"].split("\n\n")[-1].splitlines()
    assert table[0].split()[:2] == ["mode", "input"]
    assert [row.split()[1] for row in table[2:4]] == ["path", "path"]
    by_clip: dict[str, dict[int, list[str]]] = {}
    for mode, doc in docs.items():
        by_clip[mode] = {}
        for step in doc["steps"]:
            assert step["input"] == mode
            assert step["ok"] == step["requests"] > 0 and step["errors"] == {}
            assert step["server_ms"]["decode_ms"] > 0
            raw = step["raw"]
            for i, tags in zip(raw["clip"], raw["tags"], strict=True):
                assert tags, f"{mode}: request {i} answered no tags"
                by_clip[mode].setdefault(i % 2, tags)
                assert by_clip[mode][i % 2] == tags  # the same clip, the same answer
    assert by_clip["path"] == by_clip["bytes"]


def test_path_input_needs_clips_from_files(target: str, clips: Path) -> None:
    bare = [Clip("a.mp4", (clips / "a.mp4").read_bytes())]  # bytes only: no file to name
    plan = Plan((1,), requests=1)
    with pytest.raises(ValueError, match=r"a\.mp4 was given as bytes only"):
        asyncio.run(run_plan(target, bare, plan, CallOptions(input="path")))
    # Bytes mode sends them as before.
    (step,) = asyncio.run(run_plan(target, bare, plan))
    assert (step.input, [s.status for s in step.samples]) == ("bytes", ["OK"])
    # Path mode sends the path alone: the server reads the file, not these (junk) bytes.
    named = [Clip("a.mp4", b"junk", (clips / "a.mp4").absolute())]
    (by_path,) = asyncio.run(run_plan(target, named, plan, CallOptions(input="path")))
    (by_bytes,) = asyncio.run(run_plan(target, named, plan))
    assert [s.status for s in by_path.samples] == ["OK"]
    assert [s.status for s in by_bytes.samples] == ["INVALID_ARGUMENT"]


def test_png_without_matplotlib(
    target: str, clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    report, png = tmp_path / "r.json", tmp_path / "r.png"
    argv = ["--server", target, "--clips", str(clips), "--requests", "2", "--warmup", "0"]
    code, _, err = _run([*argv, "--quiet", "--json", str(report), "--png", str(png)])
    assert code == 0
    assert "vidtag[bench]" in err and not png.exists()
    assert json.loads(report.read_text())["steps"][0]["ok"] == 2


def test_server_not_serving(clips: Path, tmp_path: Path) -> None:
    argv = ["--server", "127.0.0.1:1", "--clips", str(clips), "--wait", "0", "--quiet"]
    code, _, err = _run([*argv, "--json", str(tmp_path / "r.json")])
    assert code == 1 and "not serving (UNAVAILABLE)" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["--concurrency", "2", "--sweep", "1,2"],
        ["--rate", "2", "--rates", "1,2"],
        ["--clip-spec", "codec=h264"],
        ["--requests", "0"],
    ],
)
def test_usage_errors(clips: Path, extra: list[str]) -> None:
    code, out, err = _run(["--server", "h:1", "--clips", str(clips), *extra])
    assert code == 2 and not out and err.startswith("vidtag bench:")


def test_poisson_schedule() -> None:
    a = poisson_schedule(20.0, 50.0, seed=7)
    assert np.array_equal(a, poisson_schedule(20.0, 50.0, seed=7))  # deterministic per seed
    assert not np.array_equal(a[:10], poisson_schedule(20.0, 50.0, seed=8)[:10])
    assert abs(len(a) - 1000) < 4 * np.sqrt(1000)  # Poisson(1000): sd ~32
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 50.0
    gaps = np.diff(a)
    assert gaps.mean() == pytest.approx(1 / 20, rel=0.1)
    assert np.std(gaps) == pytest.approx(np.mean(gaps), rel=0.15)  # exponential: sd == mean
    # One seed, one unit-rate draw: a faster rate is the same schedule compressed in time.
    b = poisson_schedule(40.0, 10.0, seed=7)
    np.testing.assert_allclose(b, a[a < 20.0] / 2)
    assert len(poisson_schedule(0.0, 5.0, seed=1)) == 0


def test_server_timings() -> None:
    r = pb.TagVideoResponse(timings=pb.Timings(decode_ms=2.0, inference_ms=3.0, total_ms=6.0))
    t = server_timings(r)
    assert (t["decode_ms"], t["inference_ms"], t["total_ms"]) == (2.0, 3.0, 6.0)
    assert all(isinstance(v, float) for v in t.values())
    assert server_timings(pb.TagVideoResponse()) == {}


def test_parse_clip_spec() -> None:
    spec = parse_clip_spec("duration=30,size=540x960,fps=30,codec=h264,gop=4s,vfr=false")
    assert spec == {
        "duration": 30.0,
        "size": (540, 960),
        "fps": 30,
        "codec": "h264",
        "gop": "4s",
        "vfr": False,
    }
    assert parse_clip_spec("tags=square+move_left,audio=true") == {
        "tags": ["square", "move_left"],
        "audio": True,
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_clip_spec("colour=red")
    with pytest.raises(ValueError, match="key=value"):
        parse_clip_spec("h264")


def test_synth_clips_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"duration": 1.0, "size": (96, 160), "fps": 10, "codec": "h264", "gop": "1s"}
    first = synth_clips(2, seed=5, overrides=spec, cache=tmp_path, progress=False)
    assert len(first) == 2 and all(c.data for c in first)
    assert len(list(tmp_path.iterdir())) == 1

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated a cached clip")

    monkeypatch.setattr("vidtag.synth.generate", fail)
    assert synth_clips(1, seed=5, overrides=spec, cache=tmp_path, progress=False) == first[:1]
    with pytest.raises(AssertionError, match="regenerated"):  # more clips than cached: generate
        synth_clips(3, seed=5, overrides=spec, cache=tmp_path, progress=False)
