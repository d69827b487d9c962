"""The decoder on the kinds of file real uploads are: every index path agrees with a full demux,
parallel decoding returns exactly what sequential decoding does, and odd files decode."""

from __future__ import annotations

import io
import itertools
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import hostile_media
import numpy as np
import pytest
from media import encode_clip, red_centroid_x

from vidtag.decode import DecodeLimits, SamplingSpec, pyav_backend, sample_frames
from vidtag.decode.index import index_by_demux, index_from_tables
from vidtag.decode.mp4 import MAX_BOXES, isobmff_rotation, read_track_tables, sample_counts
from vidtag.decode.pyav_backend import open_container
from vidtag.decode.source import Source
from vidtag.errors import InvalidVideo, LimitExceeded

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


def test_index_packets_own_their_bytes(files: dict[str, Path]) -> None:
    """A packet the decoders get holds an FFmpeg-owned copy, not a view of the bytes it was
    read as (a view is released under the GIL by whichever thread drops it last: a deadlock
    with frame threads, see `ffmpeg_packet`)."""
    limits, lent = DecodeLimits(), []

    def read(pos: int, size: int) -> bytearray:
        lent.append(bytearray(src.read(pos, size)))
        return lent[-1]

    with Source(files["h264_bframes.mp4"].read_bytes(), limits) as src:
        c = open_container(src)
        index = index_from_tables(c, c.streams.video[0], read, src.size, limits)
        c.close()
    assert index is not None
    pkt = index.packet(0)
    want = bytes(lent[-1])
    lent[-1][:] = bytes(len(want))
    assert bytes(pkt) == want and any(want)


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
        ff = sample_frames(files[name], SamplingSpec(policy=policy, threads=3, threading="ffmpeg"))
        for other in (two, ff):
            np.testing.assert_array_equal(one.frames, other.frames)
            assert one.timestamps == other.timestamps and one.rotation == other.rotation
            assert one.frames_decoded == other.frames_decoded


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


# ---------------------------------------------------------------- crafted and fuzzed headers
# Each of these crashed (or hung, or allocated without bound) before its fix; fuzz/fuzz_decode.py
# found the first four.


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """3 s H.264, keyframes at samples 1, 26, 51, moov after mdat, video in one chunk."""
    return encode_clip(tmp_path_factory.mktemp("plain") / "plain.mp4", seconds=3.0).read_bytes()


@pytest.mark.parametrize("threads", [1, 2])
def test_packets_before_the_first_flagged_keyframe_open_a_gop(plain: bytes, threads: int) -> None:
    data = hostile_media.mp4_with_keyframes(plain, [26, 51])  # sample 1 not flagged
    clip = sample_frames(data, SamplingSpec(frames=8, threads=threads))
    assert clip.frames.shape[0] == 8 and min(clip.timestamps) < 1.0


def test_a_codec_without_decoder_is_invalid(plain: bytes) -> None:
    (avc1,) = hostile_media.find(plain, "moov/trak/mdia/minf/stbl/stsd/avc1")
    with pytest.raises(InvalidVideo, match="no decoder"):
        sample_frames(hostile_media.rename(plain, avc1, b"zzzz"))


@pytest.mark.parametrize("degrees", [37.0, 232.0, 301.0])
def test_any_display_angle_snaps_to_a_quarter_turn(plain: bytes, degrees: float) -> None:
    data = hostile_media.mp4_with_display_angle(plain, degrees)
    spec = SamplingSpec(frames=2, height=64, width=40)
    clip = sample_frames(data, spec)
    assert clip.frames.shape == (2, 64, 40, 3)
    track = 0
    assert clip.rotation == isobmff_rotation(lambda o, n: data[o : o + n], len(data), track)
    assert (clip.width, clip.height) == ((288, 160) if clip.rotation in (90, 270) else (160, 288))


def test_composition_offset_runs_are_not_expanded_past_the_samples(plain: bytes) -> None:
    data = hostile_media.mp4_with_ctts_run(plain, 0xFFFFFFFF)  # 2^32 samples of one offset
    read = lambda o, n: data[o : o + n]  # noqa: E731
    assert read_track_tables(read, len(data), 1, max_samples=75) is None
    assert sample_frames(data, SamplingSpec(frames=4)).frames.shape[0] == 4  # demuxed instead


@pytest.mark.parametrize("make", ["long", "single frame"])
def test_a_clip_of_zero_duration_lasts_one_frame(plain: bytes, tmp_path: Path, make: str) -> None:
    base = plain if make == "long" else encode_clip(tmp_path / "one.mp4", seconds=0.04).read_bytes()
    clip = sample_frames(hostile_media.mp4_zero_duration(base), SamplingSpec(frames=4))
    assert clip.duration == pytest.approx(0.04) and clip.timestamps == (0.0,) * 4


@pytest.mark.parametrize("count", [10**9, 10**8, 3 * 10**7, 20_001])
def test_sample_count_claims_are_refused_before_ffmpeg_indexes_them(
    plain: bytes, count: int
) -> None:
    data = hostile_media.mp4_claiming_samples(plain, count)
    t0 = time.monotonic()
    with pytest.raises(LimitExceeded, match=f"claims {count} frames"):
        sample_frames(data)
    assert time.monotonic() - t0 < 0.5


def test_a_leading_unknown_box_does_not_hide_a_count_claim(plain: bytes) -> None:
    """FFmpeg's probe skips boxes of unknown type at the start; so must the check (it once
    looked only at inputs whose first box had a known type: 2.8 s, 2.4 GB behind this one)."""
    data = b"\x00\x00\x00\x08zzzz" + hostile_media.mp4_claiming_samples(plain, 3 * 10**7)
    t0 = time.monotonic()
    with pytest.raises(LimitExceeded, match="claims 30000000 frames"):
        sample_frames(data)
    assert time.monotonic() - t0 < 0.5


def test_fragment_sample_counts_are_checked_too(plain: bytes) -> None:
    data = hostile_media.fragmented(plain)
    counts = sample_counts(lambda o, n: data[o : o + n], len(data))
    assert [(c.handler, c.samples) for c in counts] == [(b"vide", 75)]
    assert sample_frames(data, SamplingSpec(frames=4)).frames.shape[0] == 4
    # Found by fuzzing: FFmpeg's own index of this took 2.2 s and 3 GB.
    bomb = hostile_media.fragment_claiming_samples(data, 83886086)
    t0 = time.monotonic()
    with pytest.raises(LimitExceeded, match=r"claims 8388\d{4} frames"):
        sample_frames(bomb)
    assert time.monotonic() - t0 < 0.5
    # Also found by fuzzing: a traf outside any moof is parsed all the same (11.6 s, 2.4 GB);
    # it has no place there, so it is refused before FFmpeg sees it.
    moof = [b for b in hostile_media.boxes(data) if b.kind == b"moof"][-1]
    loose = hostile_media.fragment_claiming_samples(hostile_media.unwrap(data, moof), 67108865)
    assert hostile_media.find(loose, "traf")  # at the top level now
    with pytest.raises(InvalidVideo, match="misplaced MP4 box 'traf' at the top level"):
        sample_frames(loose)


@pytest.mark.parametrize("copies", [1, 3])
def test_fragment_boxes_out_of_place_are_refused_before_ffmpeg(copies: int) -> None:
    """Found by fuzzing: a moof inside the moov cost FFmpeg ~0.7 s of CPU per copy."""
    data = hostile_media.moof_in_moov(copies)
    t0 = time.monotonic()
    with pytest.raises(InvalidVideo, match="misplaced MP4 box 'moof' inside 'moov'"):
        sample_frames(data)
    assert time.monotonic() - t0 < 0.5


def test_too_many_boxes_is_a_limit() -> None:
    data = b"\x00\x00\x00\x08free" * (MAX_BOXES + 1)
    t0 = time.monotonic()
    with pytest.raises(LimitExceeded, match="boxes"):
        sample_frames(data)
    assert time.monotonic() - t0 < 2.0


def test_frame_size_in_the_sps_is_refused_before_decoding(plain: bytes) -> None:
    with pytest.raises(LimitExceeded, match="8192x8192"):
        sample_frames(hostile_media.mp4_with_sps_size(plain, 8192, 8192))
    with pytest.raises(InvalidVideo):  # FFmpeg refuses this size itself: nothing decodes
        sample_frames(hostile_media.mp4_with_sps_size(plain, 16384, 16384))
    # A sample entry that lies is overruled by the SPS, which is what the decoder uses.
    clip = sample_frames(hostile_media.mp4_with_entry_size(plain, 16384, 16384))
    assert (clip.width, clip.height) == (160, 288)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_oversized_in_band_sps_allocates_no_frame(
    plain: bytes, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = hostile_media.mp4_with_inband_sps(plain, 25, 4096, 4096)  # at the second keyframe
    spec = SamplingSpec(frames=8, threads=threads)
    clip = sample_frames(data, spec)  # the decoders' pixel cap refuses those pictures
    assert clip.corrupt_packets > 0 and (clip.width, clip.height) == (160, 288)
    # Without FFmpeg's cap, the decoded frame's own size is still checked.
    monkeypatch.setattr(pyav_backend, "_pixel_cap", lambda cc, max_pixels: None)
    with pytest.raises(LimitExceeded, match="decoded frame is 4096x4096"):
        sample_frames(data, replace(spec, policy="exact"))


def test_a_reserved_colour_matrix_converts_as_unspecified() -> None:
    """Found by fuzzing: swscale refused frames whose colorspace is a reserved value
    (ENOTSUP), which failed the whole decode."""
    data = hostile_media.mpeg2_with_colour_matrix(140)
    with av.open(io.BytesIO(data)) as c:
        assert next(c.decode(video=0)).colorspace == 140  # what reaches the converter
    clip = sample_frames(data, SamplingSpec(frames=4, height=32, width=32))
    assert clip.codec == "mpeg2video" and clip.corrupt_packets == 0
    assert clip.frames[-1].mean() > clip.frames[0].mean()  # the frames are the real ones


@pytest.mark.parametrize("name", ["h264_bframes.mp4", "h264_rot90_audio.mp4", "hevc_10bit.mp4"])
def test_the_light_probe_decodes_no_picture_and_changes_no_frame(
    files: dict[str, Path], name: str
) -> None:
    """Opening with the light probe skips the picture FFmpeg's probe would decode (an H.264
    keyframe, just for its pixel format); what the sampler returns is the same."""
    limits, spec = DecodeLimits(), SamplingSpec(frames=6, threads=2)
    got = {}
    for light in (False, True):
        with pyav_backend.indexed(files[name], limits, light_probe=light) as (_, _, s, index):
            if "h264" in name:  # the pixel format is known only once a picture was decoded
                assert (s.codec_context.format is None) == light
            plan = pyav_backend.plan_frames(index, spec)
            got[light] = pyav_backend.execute_plan(s, index, plan, spec, limits, threads=2)
    full, light_ = got[False], got[True]
    assert sorted(full[0]) == sorted(light_[0]) and full[1:] == light_[1:]
    for i in full[0]:
        np.testing.assert_array_equal(full[0][i], light_[0][i])
    clip = sample_frames(files[name], spec)  # the backend opens light
    assert clip.rotation == full[3]


@pytest.mark.parametrize("rotation", [0, 90])
def test_two_gops_decode_on_two_decoders_as_one_would(
    tmp_path: Path, rotation: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clip with two keyframes (a 250-frame GOP in a 15 s clip) gets both decoders, started
    together; the frames and the display rotation are what one decoder returns."""
    path = encode_clip(tmp_path / "two.mp4", seconds=4.0, gop=50, rotation=rotation)
    spec = SamplingSpec(frames=6, height=64, width=40)
    one = sample_frames(path, replace(spec, threads=1))
    extra = []
    real = pyav_backend._extra_decoder
    monkeypatch.setattr(
        pyav_backend, "_extra_decoder", lambda *a, **k: extra.append(1) or real(*a, **k)
    )
    two = sample_frames(path, replace(spec, threads=2))
    assert len(extra) == 1 and one.keyframes == 2
    np.testing.assert_array_equal(one.frames, two.frames)
    assert one.timestamps == two.timestamps and two.rotation == rotation


@pytest.mark.parametrize("name", ["h264_bframes.mp4", "h264_open_gop.mp4", "hevc_10bit.mp4"])
@pytest.mark.parametrize("policy", ["exact", "fast"])
def test_frames_nothing_refers_to_are_skipped_and_the_frames_stay_the_same(
    files: dict[str, Path], name: str, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding forward to a frame, the non-reference frames on the way (B-frames here) are
    skipped unless returned: identical frames, fewer decoded."""
    spec = SamplingSpec(frames=6, height=64, width=40, policy=policy)  # type: ignore[arg-type]
    skipping = sample_frames(files[name], spec)
    monkeypatch.setattr(pyav_backend, "SKIP_NONREF_CODECS", frozenset())
    every = sample_frames(files[name], spec)
    assert skipping.timestamps == every.timestamps
    np.testing.assert_array_equal(skipping.frames, every.frames)
    if policy == "exact":
        assert skipping.frames_decoded < every.frames_decoded
