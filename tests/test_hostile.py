"""Hostile uploads against a running server: each one gets tags or INVALID_ARGUMENT with a
reason within 2 s, and the server stays SERVING and keeps answering good requests."""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import grpc
import hostile_media
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


def _mp3(cover: bool = False) -> bytes:
    """A second of MP3 (libmp3lame, else mp2); `cover` adds an ID3 cover image, which FFmpeg
    shows as a video stream of one attached picture."""
    buf = io.BytesIO()
    codec = "libmp3lame" if "libmp3lame" in av.codecs_available else "mp2"
    with av.open(buf, "w", format="mp3") as out:
        sound = out.add_stream(codec, rate=22050, layout="mono")
        fmt = "fltp" if codec == "libmp3lame" else "s16"
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 22050), np.float32 if fmt == "fltp" else np.int16),
            format=fmt,
            layout="mono",
        )
        frame.sample_rate, frame.pts = 22050, 0
        for pkt in [*sound.encode(frame), *sound.encode()]:
            out.mux(pkt)
    data = buf.getvalue()
    if not cover:
        return data
    if data[:3] == b"ID3":  # drop the muxer's own tag (syncsafe size)
        data = data[10 + ((data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]) :]
    apic = b"\x00image/png\x00\x03\x00" + _png()
    frame_ = b"APIC" + len(apic).to_bytes(4, "big") + b"\x00\x00" + apic
    n = len(frame_)
    size = bytes([(n >> 21) & 127, (n >> 14) & 127, (n >> 7) & 127, n & 127])
    return b"ID3\x03\x00\x00" + size + frame_ + data


def _corrupt_mid_stream(g: bytes) -> bytes:
    """Random bytes over a few stretches in the middle half of the media data."""
    (mdat,) = hostile_media.find(g, "mdat")
    data = bytearray(g)
    rng = np.random.default_rng(2)
    span = mdat.end - mdat.payload
    for k in range(5):
        at = mdat.payload + span // 4 + k * span // 10
        data[at : at + 300] = rng.bytes(300)
    return bytes(data)


def _loose_traf(g: bytes) -> bytes:
    """Found by fuzzing: a fragment's traf outside any moof (FFmpeg parses it anyway) with a
    trun of 67108865 field-less samples; 11.6 s and 2.4 GB of FFmpeg index before the fix."""
    frag = hostile_media.fragmented(g)
    moof = [b for b in hostile_media.boxes(frag) if b.kind == b"moof"][-1]
    return hostile_media.fragment_claiming_samples(hostile_media.unwrap(frag, moof), 67108865)


@pytest.fixture(scope="module")
def one_frame(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("hostile1")
    return encode_clip(d / "one.mp4", seconds=0.04).read_bytes()


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
        _AT_START.append(_memory())  # before the first hostile request
        yield c


_AVC1 = "moov/trak/mdia/minf/stbl/stsd/avc1"
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
    "empty": lambda g: b"",
    "mp3 audio": lambda g: _mp3(),
    "mp3 with cover art": lambda g: _mp3(cover=True),
    # Frame sizes: in the SPS (FFmpeg itself refuses 16384^2; 8192^2 is ours to refuse), in the
    # sample entry and track header only (the SPS is the truth), and in an SPS sent in-band at
    # the second keyframe (the decoders' pixel cap refuses it: those packets count as corrupt).
    "16384x16384 in the SPS": lambda g: hostile_media.mp4_with_sps_size(g, 16384, 16384),
    "8192x8192 in the SPS": lambda g: hostile_media.mp4_with_sps_size(g, 8192, 8192),
    "16384x16384 in the sample entry": lambda g: hostile_media.mp4_with_entry_size(g, 16384, 16384),
    "4096x4096 SPS in-band": lambda g: hostile_media.mp4_with_inband_sps(g, 25, 4096, 4096),
    # 3*10^7 samples kept FFmpeg's mov demuxer busy for ~7 s before the count was checked.
    "claims 10^9 frames": lambda g: hostile_media.mp4_claiming_samples(g, 10**9),
    "claims 3*10^7 frames": lambda g: hostile_media.mp4_claiming_samples(g, 3 * 10**7),
    "the same behind an unknown box": lambda g: (
        b"\x00\x00\x00\x08zzzz" + hostile_media.mp4_claiming_samples(g, 3 * 10**7)
    ),
    # Found by fuzzing: a `trun` whose samples cost no bytes, 3 GB of FFmpeg index.
    "fragment claims 8*10^7 frames": lambda g: hostile_media.fragment_claiming_samples(
        hostile_media.fragmented(g), 83886086
    ),
    "loose traf claims 6.7*10^7 frames": _loose_traf,
    "moof inside moov, 3 copies": lambda g: hostile_media.moof_in_moov(3),  # ~2 s of FFmpeg CPU
    "corrupt packets mid-stream": _corrupt_mid_stream,
    "zero duration": lambda g: hostile_media.mp4_zero_duration(g),
    # Fuzz findings (fuzz/fuzz_decode.py), each a crash (INTERNAL) before its fix.
    "first packet not a keyframe": lambda g: hostile_media.mp4_with_keyframes(g, [26, 51]),
    "unknown codec": lambda g: hostile_media.rename(g, hostile_media.find(g, _AVC1)[0], b"zzzz"),
    "ctts run of 2^32 samples": lambda g: hostile_media.mp4_with_ctts_run(g, 0xFFFFFFFF),
    "display matrix at 37 degrees": lambda g: hostile_media.mp4_with_display_angle(g, 37),
    "reserved colour matrix": lambda g: hostile_media.mpeg2_with_colour_matrix(140),
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


def test_a_single_frame_of_zero_duration_gets_tags(client: VidtagClient, one_frame: bytes) -> None:
    result = client.tag(hostile_media.mp4_zero_duration(one_frame))
    assert result.tags and result.video.duration > 0


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("8192x8192 in the SPS", "frame size 8192x8192 exceeds"),
        ("claims 10^9 frames", "claims 1000000000 frames"),
        ("mp3 audio", "no video stream"),
        ("mp3 with cover art", "only an attached picture"),
        ("unknown codec", "no decoder"),
    ],
)
def test_refusals_say_why(client: VidtagClient, good: bytes, case: str, reason: str) -> None:
    with pytest.raises(InvalidVideo, match=reason):
        client.tag(CASES[case](good))


_AT_START: list[tuple[int, dict[int, int]]] = []


def _kib(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/PID/status, in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _memory() -> tuple[int, dict[int, int]]:
    """(RSS of this process, which runs the server, in KiB; {decode worker pid: peak RSS})."""
    me = os.getpid()
    return _kib(me, "VmRSS"), {p: _kib(p, "VmHWM") for p in _children(me)}


def _tag_or_reason(client: VidtagClient, data: bytes) -> None:
    with contextlib.suppress(InvalidVideo):
        client.tag(data)


def test_memory_stays_bounded_under_hostile_input(client: VidtagClient, good: bytes) -> None:
    """Every case once (warm), then 50 more hostile requests: the server's RSS may not grow by
    150 MB over those (a leak) nor over the whole module (every case above included), nor may
    a decode worker's peak RSS (a huge allocation on some input)."""
    inputs = [make(good) for make in CASES.values()]
    for data in inputs:
        _tag_or_reason(client, data)
    rss0, peaks0 = _memory()
    assert peaks0, "no decode worker processes found"
    for i in range(50):
        _tag_or_reason(client, inputs[i % len(inputs)])
    assert client.tag(good).tags
    rss1, peaks1 = _memory()
    limit = 150 * 1024
    assert rss1 - rss0 < limit, f"server RSS grew {(rss1 - rss0) // 1024} MB"
    rss_start, peaks_start = _AT_START[0]
    assert rss1 - rss_start < limit, f"server RSS grew {(rss1 - rss_start) // 1024} MB in all"
    for pid, peak in peaks_start.items():
        if pid in peaks1:
            grew = peaks1[pid] - peak
            assert grew < limit, f"decode worker {pid}: peak RSS grew {grew // 1024} MB in all"
    for pid, peak in peaks1.items():
        grew = peak - peaks0.get(pid, min(peaks0.values()))
        assert grew < limit, f"decode worker {pid}: peak RSS grew {grew // 1024} MB"
        assert peak < 1024 * 1024, f"decode worker {pid}: peak RSS {peak // 1024} MB"


def test_playlists_in_uploads_fetch_nothing(
    client: VidtagClient, good: bytes, tmp_path: Path
) -> None:
    """An HLS playlist or an ffconcat list naming a URL or a local file: refused, and no
    request reaches the URL (decoding never opens a network protocol)."""
    import http.server
    import threading

    (tmp_path / "seg.mp4").write_bytes(good)
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kw)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            hits.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/seg.mp4"
    try:
        for entry in (url, f"file://{tmp_path}/seg.mp4", f"{tmp_path}/seg.mp4"):
            hls = f"#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3.0,\n{entry}\n#EXT-X-ENDLIST\n"
            for upload in (hls, f"ffconcat version 1.0\nfile {entry}\n"):
                with pytest.raises(InvalidVideo):
                    client.tag(upload.encode())
    finally:
        httpd.shutdown()
    assert hits == []
