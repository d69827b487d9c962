"""The decoder on the kinds of file real uploads are: every index path agrees with a full demux,
parallel decoding returns exactly what sequential decoding does, and odd files decode."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from media import encode_clip, red_centroid_x

from vidtag.decode import DecodeLimits, SamplingSpec, sample_frames
from vidtag.decode.index import index_by_demux, index_from_tables
from vidtag.decode.mp4 import read_track_tables
from vidtag.decode.pyav_backend import open_container
from vidtag.decode.source import Source
from vidtag.errors import InvalidVideo

VARIANTS: dict[str, dict[str, Any]] = {
    "h264_bframes.mp4": {"bframes": 3, "faststart": True},
    "h264_vfr.mp4": {"vfr": True},
    "h264_rot90_audio.mp4": {"rotation": 90, "audio": True},
    "h264_odd_size.mp4": {"width": 90, "height": 146},
    "h264_open_gop.mp4": {"open_gop": True, "bframes": 3, "gop": 30},
    "hevc_10bit.mp4": {"codec": "libx265", "pix_fmt": "yuv420p10le"},
    "h264_one_key.mp4": {"gop": None},
    "h264_no_count.mkv": {"audio": True},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("variants")
    return {name: encode_clip(d / name, seconds=3.0, **kw) for name, kw in VARIANTS.items()}


def _indexes(path: Path) -> tuple[Any, Any]:
    limits = DecodeLimits()
    with Source(path.read_bytes(), limits) as src:  # bytes: packets stay readable after
        c = open_container(src)
        tables = index_from_tables(c, c.streams.video[0], src.read, src.size, limits)
        c.close()
        c = open_container(src)
        demux = index_by_demux(c, c.streams.video[0], limits)
        c.close()
    return tables, demux


@pytest.mark.parametrize("name", [n for n in VARIANTS if n.endswith(".mp4")])
def test_sample_tables_give_the_demuxed_index(files: dict[str, Path], name: str) -> None:
    tables, demux = _indexes(files[name])
    assert tables is not None and tables.source == "tables"
    assert len(tables) == len(demux)
    np.testing.assert_array_equal(tables.pts_s, demux.pts_s)
    np.testing.assert_array_equal(tables.is_key, demux.is_key)
    np.testing.assert_array_equal(tables.sizes, demux.sizes)
    assert tables.origin_s == demux.origin_s and tables.duration == demux.duration
    for i in (0, len(tables) // 2, len(tables) - 1):  # the packets themselves are the same bytes
        assert bytes(tables.packet(i)) == bytes(demux.packet(i))


def test_other_containers_are_demuxed(files: dict[str, Path]) -> None:
    tables, demux = _indexes(files["h264_no_count.mkv"])
    assert tables is None and demux.source == "demux" and len(demux) == 75


def test_b_frames_need_composition_offsets(files: dict[str, Path]) -> None:
    data = files["h264_bframes.mp4"].read_bytes()
    with av.open(str(files["h264_bframes.mp4"])) as c:
        track = int(c.streams.video[0].id)
    tables = read_track_tables(lambda o, n: data[o : o + n], len(data), track)
    assert tables is not None and tables.sample_count == 75
    assert tables.ctts is not None and len(np.unique(tables.ctts)) > 1


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parallel_decoding_returns_what_sequential_does(files: dict[str, Path], name: str) -> None:
    for policy in ("fast", "exact"):
        one = sample_frames(files[name], SamplingSpec(policy=policy, threads=1))
        two = sample_frames(files[name], SamplingSpec(policy=policy, threads=2))
        np.testing.assert_array_equal(one.frames, two.frames)
        assert one.timestamps == two.timestamps and one.rotation == two.rotation
        assert one.frames_decoded == two.frames_decoded


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_decodes_in_order_and_in_display_orientation(
    files: dict[str, Path], name: str
) -> None:
    kw = VARIANTS[name]
    clip = sample_frames(files[name], SamplingSpec(frames=6, height=64, width=40, policy="exact"))
    assert clip.frames.shape == (6, 64, 40, 3) and clip.frames.dtype == np.uint8
    assert list(clip.timestamps) == sorted(clip.timestamps)
    assert clip.mean_deviation < 0.1
    if kw.get("rotation"):
        assert clip.rotation == 90 and (clip.width, clip.height) == (288, 160)
        return
    xs = [red_centroid_x(f) for f in clip.frames]  # the red square moves right
    assert all(b > a for a, b in itertools.pairwise(xs)), xs


def test_ten_bit_video_comes_out_as_8_bit_rgb(files: dict[str, Path]) -> None:
    clip = sample_frames(files["hevc_10bit.mp4"], SamplingSpec(frames=2, height=64, width=40))
    f = clip.frames.astype(int)
    red = (f[..., 0] > 180) & (f[..., 1] < 90) & (f[..., 2] < 120)  # the square, in full colour
    assert clip.codec == "hevc" and red.sum(axis=(1, 2)).min() > 20


def test_corrupt_packets_are_skipped_and_reported(files: dict[str, Path]) -> None:
    path = files["h264_bframes.mp4"]
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as c:
        entries = list(c.streams.video[0].index_entries)
    keys = [e for e in entries if e.is_keyframe]
    bad = keys[len(keys) // 2]
    data[bad.pos : bad.pos + bad.size] = b"\x00\x00\x00\x05" + bytes(bad.size - 4)
    clip = sample_frames(bytes(data), SamplingSpec(frames=4, policy="fast"))
    assert clip.frames.shape[0] == 4
    assert clip.corrupt_packets >= 1


def test_truncated_mp4_keeps_the_samples_that_arrived(files: dict[str, Path]) -> None:
    data = files["h264_bframes.mp4"].read_bytes()  # index first (faststart): it survives the cut
    clip = sample_frames(data[: int(len(data) * 0.6)], SamplingSpec(frames=4))
    assert clip.frames.shape[0] == 4 and max(clip.timestamps) < 0.65 * 3.0


def test_audio_only_input_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as out:
        sound = out.add_stream("aac", rate=16000, layout="mono")
        wave = np.zeros((1, 16000), np.float32)
        frame = av.AudioFrame.from_ndarray(wave, format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for pkt in [*sound.encode(frame), *sound.encode()]:
            out.mux(pkt)
    with pytest.raises(InvalidVideo, match="no video stream"):
        sample_frames(path)
