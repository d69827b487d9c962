"""Atheris (libFuzzer) harness over the decode entry point: bytes -> `sample_frames` with the
serving SamplingSpec (the bundled default model's) and DecodeLimits (`vidtag serve`'s defaults).

A typed error (any `vidtag.errors.VidtagError`: InvalidVideo, LimitExceeded, ...) is the
expected answer to a bad input. Anything else is a finding: another exception, a decoded clip
that breaks the output contract (shape, dtype, finite timestamps inside the clip), a native
crash, a run longer than libFuzzer's `-timeout`, or memory beyond `-rss_limit_mb`.

    python fuzz/fuzz_decode.py --seconds 1200       # what `make fuzz` runs
    python fuzz/fuzz_decode.py build/fuzz/artifacts/crash-XXXX   # replay one input

The seed corpus (tiny clips in a dozen codec/container pairs, encoded with PyAV) is generated
into `<out>/seeds` on first use; inputs libFuzzer finds interesting go to `<out>/corpus`, crashes,
timeouts and OOMs to `<out>/artifacts`. The supervisor (the default mode) runs libFuzzer in a
child process and starts it again after each finding until the time box is spent, so one
20-minute run collects every finding rather than stopping at the first; it ends with a summary
(executions, exec/s, coverage, findings) and exits 1 if there was any finding.

Coverage (`cov`/`ft`) counts edges of vidtag's own Python code (instrumented on import);
FFmpeg is native code libFuzzer does not see, but every crash or hang in it is still caught.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import cast

import atheris

with atheris.instrument_imports(include=["vidtag.decode", "vidtag.errors"]):
    # The backend modules are imported lazily by sample_frames: import them here to instrument.
    import vidtag.decode.pyav_backend  # noqa: F401
    from vidtag.decode import DecodeLimits, SamplingSpec, sample_frames
    from vidtag.errors import VidtagError

import av
import numpy as np

DEFAULT_OUT = Path("build/fuzz")
WORKER_FLAG = "--libfuzzer-worker"
# libFuzzer defaults for this harness; any given on the command line win.
DEFAULT_FLAGS = {
    "-timeout": "10",  # s per input: 2x DecodeLimits.max_decode_s, the decode's own wall guard
    "-rss_limit_mb": "2048",
    "-max_len": "65536",
    "-report_slow_units": "3",
    "-print_final_stats": "1",
}


def serving_spec_and_limits() -> tuple[list[SamplingSpec], DecodeLimits]:
    """The specs `vidtag serve` decodes with for its default model (threads=2 when idle, 1
    under load) and its DecodeLimits (app._limits over the default ServeConfig)."""
    from dataclasses import replace

    from vidtag.runtime.artifact import load_meta
    from vidtag.runtime.repository import default_repository, resolve_model
    from vidtag.server.config import ServeConfig

    spec = load_meta(resolve_model(default_repository())).sampling_spec()
    cfg = ServeConfig()
    limits = DecodeLimits(max_bytes=max(cfg.max_receive_bytes, cfg.max_stream_bytes))
    return [replace(spec, threads=1), replace(spec, threads=2)], limits


SPECS, LIMITS = serving_spec_and_limits()


def check_clip(data: bytes) -> None:
    """One fuzz input: a typed error or a clip that keeps the DecodedClip contract."""
    spec = SPECS[len(data) % 2]  # both serving paths: one decoder, and GOPs split over two
    try:
        clip = sample_frames(data, spec, LIMITS)
    except VidtagError:
        return
    frames = clip.frames
    assert frames.dtype == np.uint8, frames.dtype
    assert frames.shape == (spec.frames, spec.height, spec.width, 3), frames.shape
    assert len(clip.timestamps) == spec.frames
    assert all(math.isfinite(t) for t in clip.timestamps), clip.timestamps
    assert math.isfinite(clip.duration) and 0 < clip.duration <= LIMITS.max_duration_s, clip
    assert all(-1e-6 <= t <= clip.duration + 1e-6 for t in clip.timestamps), clip
    assert clip.width > 0 and clip.height > 0
    assert clip.width * clip.height <= LIMITS.max_pixels, (clip.width, clip.height)
    assert clip.rotation in (0, 90, 180, 270), clip.rotation


# ---------------------------------------------------------------- seed corpus


def _encode(
    fmt: str,
    codec: str,
    *,
    size: tuple[int, int] = (64, 48),
    frames: int = 12,
    fps: int = 12,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    audio: bool = False,
    rotation: int = 0,
) -> bytes:
    """A tiny clip (a square moving over a gradient); through a file, as `faststart` rewrites it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip"
        with av.open(str(path), "w", format=fmt, options=container_options or {}) as out:
            _write_frames(out, codec, size, frames, fps, pix_fmt, options, audio, rotation)
        return path.read_bytes()


def _write_frames(
    out: av.container.OutputContainer,
    codec: str,
    size: tuple[int, int],
    frames: int,
    fps: int,
    pix_fmt: str,
    options: dict[str, str] | None,
    audio: bool,
    rotation: int,
) -> None:
    stream = cast(av.VideoStream, out.add_stream(codec, rate=fps))
    stream.width, stream.height = size
    stream.pix_fmt = pix_fmt
    stream.time_base = Fraction(1, fps)
    if options:
        opts: dict[str, object] = {**options}
        stream.options = opts
    if rotation:
        stream.set_display_rotation(rotation)
    sound = out.add_stream("aac", rate=16000, layout="mono") if audio else None
    w, h = size
    base = np.zeros((h, w, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    base[..., 2] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
    for i in range(frames):
        img = base.copy()
        x = (i * 4) % max(w - 12, 1)
        img[h // 3 : h // 3 + 12, x : x + 12] = (255, 255, 0)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        out.mux(stream.encode(frame))
    out.mux(stream.encode())
    if sound is not None:
        samples = 16000 * frames // fps
        a = av.AudioFrame.from_ndarray(
            np.zeros((1, samples), np.float32), format="flt", layout="mono"
        )
        a.sample_rate, a.pts = 16000, 0
        out.mux(sound.encode(a))
        out.mux(sound.encode())


X264 = {"preset": "ultrafast", "x264-params": "keyint=6:min-keyint=6:scenecut=0:bframes=2"}
SEEDS: dict[str, Callable[[], bytes]] = {
    "h264_bframes.mp4": lambda: _encode("mp4", "libx264", options=X264),
    "h264_faststart_audio.mp4": lambda: _encode(
        "mp4", "libx264", options=X264, container_options={"movflags": "faststart"}, audio=True
    ),
    "h264_rot90.mp4": lambda: _encode("mp4", "libx264", options=X264, rotation=90),
    "h264_fragmented.mp4": lambda: _encode(
        "mp4", "libx264", options=X264, container_options={"movflags": "frag_keyframe+empty_moov"}
    ),
    "hevc.mov": lambda: _encode(
        "mov", "libx265", options={"preset": "ultrafast", "x265-params": "keyint=6:log-level=error"}
    ),
    "vp9.webm": lambda: _encode("webm", "libvpx-vp9", options={"g": "6", "deadline": "realtime"}),
    "vp8.webm": lambda: _encode("webm", "libvpx", options={"g": "6", "deadline": "realtime"}),
    "mpeg4.mkv": lambda: _encode("matroska", "mpeg4", options={"g": "6", "bf": "1"}),
    "mjpeg.avi": lambda: _encode("avi", "mjpeg", pix_fmt="yuvj420p"),
    "mpeg2.ts": lambda: _encode("mpegts", "mpeg2video", options={"g": "6"}),
    "h264.flv": lambda: _encode("flv", "libx264", options=X264),
    "h263.3gp": lambda: _encode("3gp", "h263", size=(128, 96), frames=6),
    "ffv1.mkv": lambda: _encode("matroska", "ffv1", size=(32, 24), frames=4),
    "av1.ivf": lambda: _encode(
        "ivf", "libsvtav1", size=(64, 64), frames=6, options={"preset": "12"}
    ),
    "gif.gif": lambda: _encode("gif", "gif", size=(32, 24), frames=4, pix_fmt="rgb8"),
}


def write_seeds(directory: Path) -> list[Path]:
    """Encode every seed clip not yet in `directory` (a codec missing here is skipped)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in SEEDS.items():
        path = directory / name
        if not path.exists():
            try:
                path.write_bytes(make())
            except (av.error.FFmpegError, ValueError) as exc:
                print(f"seed {name} skipped: {exc}", file=sys.stderr)
                continue
        written.append(path)
    return written


# ---------------------------------------------------------------- running


def _worker(argv: list[str]) -> None:
    av.logging.set_level(None)  # FFmpeg's complaints about broken inputs are expected noise
    atheris.Setup([sys.argv[0], *argv], check_clip)
    atheris.Fuzz()


_STAT = re.compile(r"stat::(\w+):\s*(\d+)")
_PULSE = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+).*?exec/s: (\d+)")
_FINDING = re.compile(r"(?:Test unit written to|artifact_prefix.*?; Test unit written to) (\S+)")


def supervise(seconds: float, out: Path, extra: list[str]) -> int:
    """Run libFuzzer children until `seconds` are spent; print and return the summary."""
    seeds, corpus, artifacts = out / "seeds", out / "corpus", out / "artifacts"
    write_seeds(seeds)
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    given = {a.split("=", 1)[0] for a in extra if a.startswith("-")}
    flags = [f"{k}={v}" for k, v in DEFAULT_FLAGS.items() if k not in given] + extra
    flags.append(f"-artifact_prefix={artifacts}/")
    start = time.monotonic()
    end = start + seconds
    execs = 0
    cov = ft = 0
    findings: list[str] = []
    sessions = 0
    while (left := end - time.monotonic()) >= 5:
        sessions += 1
        cmd = [sys.executable, __file__, WORKER_FLAG, *flags, f"-max_total_time={int(left)}"]
        cmd += [str(corpus), str(seeds)]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
        assert proc.stderr is not None
        session_execs = 0
        for line in proc.stderr:
            sys.stderr.write(line)
            if m := _PULSE.search(line):
                session_execs = max(session_execs, int(m.group(1)))
                cov, ft = max(cov, int(m.group(2))), max(ft, int(m.group(3)))
            if (m := _STAT.search(line)) and m.group(1) == "number_of_executed_units":
                session_execs = max(session_execs, int(m.group(2)))
            if m := _FINDING.search(line):
                findings.append(m.group(1))
        proc.wait()
        execs += session_execs
        if proc.returncode != 0 and not findings:
            findings.append(f"libFuzzer exited {proc.returncode} without an artifact")
            break
    wall = time.monotonic() - start
    print(
        f"\nfuzz summary: {wall:.0f} s, {sessions} session(s), {execs} executions "
        f"({execs / max(wall, 1e-9):.1f} exec/s), cov {cov}, ft {ft}, "
        f"corpus {sum(1 for _ in corpus.iterdir())} inputs, {len(findings)} finding(s)"
    )
    for f in findings:
        print(f"  finding: {f}")
    return 1 if findings else 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == WORKER_FLAG:
        _worker(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1200.0, help="time box (default 1200)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="seeds/corpus/artifacts")
    parser.add_argument("--seeds-only", action="store_true", help="write the seeds and stop")
    args, extra = parser.parse_known_args()
    inputs = [Path(a) for a in extra if not a.startswith("-")]
    if inputs:  # replay: libFuzzer runs each given file once
        _worker(extra)
        return 0
    if args.seeds_only:
        for p in write_seeds(args.out / "seeds"):
            print(p, p.stat().st_size)
        return 0
    return supervise(args.seconds, args.out, extra)


if __name__ == "__main__":
    sys.exit(main())
