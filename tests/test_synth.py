"""STB-1 generator: tag rules, sampling ranges, rendering and the encoded files (tiny clips)."""

from __future__ import annotations

import json
import math
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from vidtag.synth import clip_spec, generate
from vidtag.synth.matrix import ALLOWED_CONTAINERS, TEST_SIZES, scaled_size
from vidtag.synth.render import Renderer, instance_state
from vidtag.synth.sampling import MIN_CONTRAST, palette
from vidtag.synth.scenes import line_coverage
from vidtag.synth.spec import ClipSpec
from vidtag.synth.structure import check_tags
from vidtag.tags import TAG_GROUPS, TAG_INDEX

TINY: dict[str, Any] = {
    "duration": 2.0, "size": (96, 160), "fps": 25, "gop": "1s", "codec": "h264",
    "rotation": 0, "audio": False, "vfr": False,
}  # fmt: skip
DECODERS = {"h264": {"h264"}, "hevc": {"hevc"}, "vp9": {"vp9", "libvpx-vp9"},
            "av1": {"av1", "libdav1d", "libaom-av1"}}  # fmt: skip
CODECS = [("h264", "mp4"), ("hevc", "mp4"), ("vp9", "webm"), ("av1", "mkv"), ("av1", "mp4")]


def _specs(split: str, n: int, seed: int = 11) -> list[ClipSpec]:
    return [clip_spec(split, seed, i, None) for i in range(n)]


def _make(tmp_path: Path, **overrides: Any) -> tuple[dict[str, Any], Path]:
    """Generate one clip in-process; return its manifest row and file path."""
    seed = overrides.pop("seed", 5)
    manifest = generate(
        tmp_path, 1, split="test", seed=seed, workers=1, progress=False,
        overrides={**TINY, **overrides},
    )  # fmt: skip
    row = json.loads(manifest.read_text().splitlines()[0])
    return row, tmp_path / row["path"]


def _video_packets(path: Path) -> list[tuple[int, bool]]:
    """(pts, is_keyframe) of every video packet in presentation order."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        return sorted((p.pts, p.is_keyframe) for p in c.demux(vs) if p.size and p.pts is not None)


def _keyframe_indices(path: Path) -> list[int]:
    return [i for i, (_, key) in enumerate(_video_packets(path)) if key]


# ---------------------------------------------------------------- tag structure


@pytest.mark.parametrize("split", ["train", "test"])
def test_tag_sets_follow_group_rules(split: str) -> None:
    for spec in _specs(split, 300):
        tags = set(spec.tags)
        groups = {g: tags & set(ts) for g, ts in TAG_GROUPS.items()}
        assert 3 <= len(tags) <= 7
        assert groups["object"] and groups["motion"]
        assert len(groups["camera"]) <= 1
        assert len(groups["scene"]) == (2 if "cut" in tags else 1) == len(spec.scenes)
        assert list(spec.tags) == sorted(tags, key=TAG_INDEX.__getitem__)
        # the tags describe exactly what is drawn
        assert groups["object"] == {i.shape for i in spec.instances}
        assert groups["motion"] == {i.motion for i in spec.instances} - {None}
        assert groups["scene"] == {s.kind for s in spec.scenes}
        assert groups["camera"] == ({spec.camera.kind} - {None})


def test_tag_mix_covers_every_tag() -> None:
    seen = {t for s in _specs("train", 400) for t in s.tags}
    assert seen == set(TAG_INDEX)


@pytest.mark.parametrize(
    "tags",
    [
        {"circle", "plain"},  # no motion, 2 tags
        {"circle", "plain", "gradient", "rotate"},  # two scenes without a cut
        {"circle", "plain", "rotate", "cut"},  # cut with one scene
        {"circle", "plain", "rotate", "shake", "cut", "gradient"},  # two camera tags
        {"circle", "square", "plain", "gradient", "rotate", "blink", "zoom_in", "cut"},  # 8 tags
        {"circle", "plain", "rotate", "blink", "zoom_in"},  # 3 motions on at most 2 instances
        {"circle", "plain", "rotate", "jump"},  # unknown tag
    ],
)
def test_invalid_tag_sets_are_rejected(tags: set[str]) -> None:
    with pytest.raises(ValueError):
        check_tags(tags)


def test_forced_tags_are_built_exactly() -> None:
    wanted = {"star", "cross", "stripes", "grid", "move_up", "zoom_out", "cut"}
    for i in range(20):
        spec = clip_spec("train", 1, i, {"tags": sorted(wanted)})
        assert set(spec.tags) == wanted


# ---------------------------------------------------------------- sampling ranges


def test_test_split_encoding_matrix() -> None:
    specs = _specs("test", 400)
    encs = [s.encoding for s in specs]
    sizes = {sz for sz, _ in TEST_SIZES}
    assert all((e.width, e.height) in sizes for e in encs)
    share = np.mean([(e.width, e.height) == (540, 960) for e in encs])
    assert 0.4 < share < 0.6
    assert all(15.0 <= e.duration <= 30.0 or e.duration in (5.0, 60.0) for e in encs)
    assert {e.fps for e in encs} == {24, 25, 30, 60}
    assert all(e.container in ALLOWED_CONTAINERS[e.codec] for e in encs)
    assert {e.codec for e in encs} == {"h264", "hevc", "vp9", "av1"}
    assert 0.45 < np.mean([e.codec == "h264" for e in encs]) < 0.65
    assert {e.gop for e in encs} == {"1s", "4s", "8s", "cuts"}
    assert all(20 <= e.crf <= 32 for e in encs)
    for flag in ("vfr", "audio"):
        assert 0 < np.mean([getattr(e, flag) for e in encs]) < 0.5
    assert 0 < np.mean([e.rotation == 90 for e in encs]) < 0.3


def test_train_split_is_a_half_size_copy() -> None:
    specs = _specs("train", 300)
    half = {scaled_size(sz, 0.5) for sz, _ in TEST_SIZES}
    assert (270, 482) in half and (240, 428) in half
    for s in specs:
        e = s.encoding
        assert (e.width, e.height) in half and e.width % 2 == 0 == e.height % 2
        assert 8.0 - 1 / e.fps <= e.duration <= 16.0 + 1 / e.fps and e.fps in (24, 25, 30)
        for sc in s.scenes:
            low, high = {"stripes": (4, 20), "checker": (8, 32), "grid": (12, 40)}.get(
                sc.kind, (0, math.inf)
            )
            assert sc.kind not in ("stripes", "checker", "grid") or low <= sc.period <= high
            assert sc.kind != "grid" or 0.5 <= sc.line_width <= 1.5


def _inside(spec: ClipSpec, cx: float, cy: float, size: float) -> bool:
    r = size / 2
    w, h = spec.encoding.width, spec.encoding.height
    return r <= cx <= w - r and r <= cy <= h - r


def test_instances_obey_size_motion_and_contrast_rules() -> None:
    for spec in _specs("test", 200):
        bg = palette(spec.scenes)
        short = min(spec.encoding.width, spec.encoding.height)
        for inst in spec.instances:
            dist = np.linalg.norm(bg - np.asarray(inst.color, dtype=np.float64), axis=1)
            assert dist.min() >= MIN_CONTRAST
            sizes = (inst.size, inst.size * inst.zoom)
            assert 0.10 * short - 1e-6 <= min(sizes) <= 0.25 * short + 1e-6
            for u in (0.0, 0.5, 1.0):
                cx, cy, size, _, _ = instance_state(inst, u, u * spec.encoding.duration)
                assert _inside(spec, cx, cy, size)
            if inst.motion and inst.motion.startswith("move_") and inst.end is not None:
                axis, extent = (
                    (0, spec.encoding.width)
                    if inst.motion in ("move_left", "move_right")
                    else (1, spec.encoding.height)
                )
                travel = inst.end[axis] - inst.start[axis]
                assert 0.35 * extent - 1e-6 <= abs(travel) <= 0.70 * extent + 1e-6
                assert (travel > 0) == (inst.motion in ("move_right", "move_down"))
            if inst.motion == "rotate":
                assert 1.0 <= abs(inst.turns) <= 3.0
            if inst.motion in ("zoom_in", "zoom_out"):
                factor = inst.zoom if inst.motion == "zoom_in" else 1 / inst.zoom
                assert 2.0 <= factor <= 3.0
            if inst.motion == "blink":
                t = np.linspace(0, spec.encoding.duration, 1000, endpoint=False)
                shown = [instance_state(inst, x / spec.encoding.duration, x)[4] for x in t]
                assert 0.4 <= np.mean(shown) < 1.0
                edges = np.diff([0.0, *inst.toggles])
                assert np.all((edges >= 1.0 - 1e-6) & (edges <= 3.0 + 1e-6))


def test_grid_lines_keep_their_ink_when_thin() -> None:
    thin = line_coverage(40, 3.0, 10.0, 0.5)
    assert sorted(set(thin.tolist())) == [0.0, 0.5]
    assert thin.sum() == pytest.approx(4 * 0.5)
    wide = line_coverage(40, 3.0, 10.0, 1.5)
    assert wide[3] == 1.0 and wide[4] == 0.5 and wide.sum() == pytest.approx(4 * 1.5)


# ---------------------------------------------------------------- rendering


def _plain_spec(tags: list[str], **extra: Any) -> ClipSpec:
    return clip_spec(
        "test", 2, 0, {**TINY, "size": (180, 320), "tags": tags, "distractors": False, **extra}
    )


def _object_mask(img: np.ndarray, bg: tuple[int, ...]) -> np.ndarray:
    return np.abs(img.astype(np.int32) - np.asarray(bg)).sum(axis=2) > 40


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize(
    ("motion", "axis", "sign"),
    [("move_right", 0, 1), ("move_left", 0, -1), ("move_down", 1, 1), ("move_up", 1, -1)],
)
def test_moving_object_moves(motion: str, axis: int, sign: int) -> None:
    spec = _plain_spec(["circle", "plain", motion])
    r = Renderer(spec)
    bg = spec.scenes[0].colors[0]
    first = _centroid(_object_mask(np.asarray(r.frame(0)), bg))
    last = _centroid(_object_mask(np.asarray(r.frame(len(r) - 1)), bg))
    extent = (spec.encoding.width, spec.encoding.height)[axis]
    assert sign * (last[axis] - first[axis]) > 0.3 * extent


def test_zoom_blink_and_rotate_are_drawn() -> None:
    spec = _plain_spec(["square", "plain", "zoom_in"])
    r, bg = Renderer(spec), spec.scenes[0].colors[0]
    area = [_object_mask(np.asarray(r.frame(i)), bg).sum() for i in (0, len(r) - 1)]
    assert area[1] > 3.5 * area[0]  # size x2-3 -> area x4-9

    spec = _plain_spec(["circle", "plain", "blink"], duration=6.0)
    r, bg = Renderer(spec), spec.scenes[0].colors[0]
    shown = [_object_mask(np.asarray(r.frame(i)), bg).any() for i in range(len(r))]
    assert any(shown) and not all(shown)

    spec = _plain_spec(["circle", "plain", "rotate"])
    r = Renderer(spec)
    inst = spec.instances[0]
    dots = []
    for i in (0, len(r) // 8):
        img = np.asarray(r.frame(i)).astype(np.int32)
        dots.append(_centroid(np.abs(img - np.asarray(inst.dot_color)).sum(axis=2) < 30))
    assert np.linalg.norm(dots[1] - dots[0]) > 0.05 * inst.size


def test_shake_jitters_the_whole_frame() -> None:
    spec = _plain_spec(["circle", "plain", "zoom_in", "shake"])
    r, bg = Renderer(spec), spec.scenes[0].colors[0]
    centres = np.array([_centroid(_object_mask(np.asarray(r.frame(i)), bg)) for i in range(12)])
    amp = np.asarray(spec.camera.shake_amp)
    wobble = np.abs(centres - centres.mean(axis=0))
    assert wobble.max() > 0.5 and np.all(wobble.max(axis=0) <= 2 * amp + 2)


def test_cut_switches_background() -> None:
    spec = _plain_spec(["circle", "plain", "gradient", "rotate", "cut"])
    r = Renderer(spec)
    assert r.cut is not None and 0.3 * len(r) - 1 <= r.cut <= 0.7 * len(r) + 1
    before, after = np.asarray(r.frame(r.cut - 1)), np.asarray(r.frame(r.cut))
    assert np.abs(before[:5, :5].astype(int) - after[:5, :5]).mean() > 10


# ---------------------------------------------------------------- generate + encoded files


@pytest.mark.parametrize(("codec", "container"), [("h264", "mp4"), ("vp9", "webm"), ("av1", "mkv")])
def test_generate_is_deterministic(tmp_path: Path, codec: str, container: str) -> None:
    runs = {}
    ov = {**TINY, "audio": True, "codec": codec, "container": container, "size": (270, 480)}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        m = generate(tmp_path / name, 2, "test", seed, workers=1, progress=False, overrides=ov)
        files = [
            (m.parent / json.loads(x)["path"]).read_bytes() for x in m.read_text().splitlines()
        ]
        runs[name] = (m.read_text(), files)
    assert runs["a"] == runs["b"]
    assert runs["a"][0] != runs["c"][0] and runs["a"][1] != runs["c"][1]


def test_generate_pool_writes_ordered_manifest(tmp_path: Path) -> None:
    m = generate(tmp_path, 3, "train", seed=3, workers=2, progress=False, overrides=TINY)
    rows = [json.loads(x) for x in m.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    keys = {"path", "tags", "duration", "width", "height", "fps", "vfr", "codec", "container",
            "gop", "crf", "rotation", "audio", "split", "seed", "index"}  # fmt: skip
    for r in rows:
        assert set(r) == keys and r["split"] == "train"
        assert (
            r["path"] == f"stb1-train-{r['index']:05d}.mp4"
            and (tmp_path / r["path"]).stat().st_size
        )
    serial = generate(
        tmp_path / "serial", 3, "train", seed=3, workers=1, progress=False, overrides=TINY
    )
    assert serial.read_text() == m.read_text()


def test_generate_time_limit_stops_early_and_lists_what_it_wrote(tmp_path: Path) -> None:
    t0 = time.monotonic()
    m = generate(
        tmp_path, 2000, "train", seed=3, workers=2, progress=False, overrides=TINY, time_limit_s=1.0
    )
    assert time.monotonic() - t0 < 20  # 2000 clips take minutes: only those in flight finish
    rows = [json.loads(x) for x in m.read_text().splitlines()]
    assert 0 < len(rows) < 100
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    assert {p.name for p in tmp_path.glob("*.mp4")} == {r["path"] for r in rows}
    partial = [
        json.loads(x) for x in (tmp_path / "manifest.partial.jsonl").read_text().splitlines()
    ]
    assert sorted(r["index"] for r in partial) == [r["index"] for r in rows]
    serial = generate(
        tmp_path / "serial", 50, "train", seed=3, workers=1, progress=False, overrides=TINY,
        time_limit_s=0.5,
    )  # fmt: skip
    assert 0 < len(serial.read_text().splitlines()) < 50


@pytest.mark.parametrize(("codec", "container"), CODECS)
def test_every_codec_encodes_and_decodes(tmp_path: Path, codec: str, container: str) -> None:
    row, path = _make(tmp_path, codec=codec, container=container, audio=True)
    assert path.suffix == f".{container}" and row["codec"] == codec
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name in DECODERS[codec]
        audio = [s.codec_context.name for s in c.streams.audio]
        assert audio == (["aac"] if container == "mp4" else ["opus"])
        frames = list(c.decode(video=0))
        assert c.duration is not None
        assert abs(c.duration / 1e6 - row["duration"]) < 0.1
    assert (frames[0].width, frames[0].height) == (row["width"], row["height"]) == (96, 160)
    assert len(frames) == round(row["duration"] * row["fps"]) == 50
    assert float(vs.average_rate or 0) == pytest.approx(row["fps"], rel=0.02)
    if codec == "h264":
        assert vs.codec_context.profile == "High"
        pts = [p for p, _ in _video_packets(path)]
        with av.open(str(path)) as c:
            dts = [p.dts for p in c.demux(video=0) if p.size]
        assert dts != sorted(pts)  # B-frames reorder: decode order differs from display order
    if codec == "hevc":
        assert vs.codec_context.codec_tag == "hvc1"


@pytest.mark.parametrize(("codec", "container"), CODECS)
def test_one_second_gop(tmp_path: Path, codec: str, container: str) -> None:
    _, path = _make(tmp_path, codec=codec, container=container, duration=3.0, gop="1s")
    assert _keyframe_indices(path) == [0, 25, 50]


@pytest.mark.parametrize(("codec", "container"), CODECS)
def test_cuts_only_gop(tmp_path: Path, codec: str, container: str) -> None:
    tags = ["triangle", "checker", "noise", "move_left", "cut"]
    _, path = _make(tmp_path, codec=codec, container=container, duration=3.0, gop="cuts", tags=tags)
    spec = clip_spec("test", 5, 0, {**TINY, "codec": codec, "container": container,
                                    "duration": 3.0, "gop": "cuts", "tags": tags})  # fmt: skip
    cut = Renderer(spec).cut
    assert cut is not None and 0 < cut < 75
    assert _keyframe_indices(path) == [0, cut]


def test_rotation_metadata_and_pixels(tmp_path: Path) -> None:
    tags = ["square", "gradient", "move_right"]
    row, path = _make(tmp_path, rotation=90, tags=tags, distractors=False, crf=20)
    assert (row["width"], row["height"], row["rotation"]) == (96, 160, 90)
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        assert (vs.codec_context.width, vs.codec_context.height) == (160, 96)
        frame = next(c.decode(video=0))
    assert frame.rotation == 90
    coded = frame.to_ndarray(format="rgb24").astype(np.int32)
    upright = np.rot90(coded, k=frame.rotation // 90)
    spec = clip_spec("test", 5, 0, {**TINY, "rotation": 90, "tags": tags, "distractors": False,
                                    "crf": 20})  # fmt: skip
    truth = np.asarray(Renderer(spec).frame(0)).astype(np.int32)
    assert np.abs(upright - truth).mean() < 8
    assert np.abs(np.rot90(coded, k=-1) - truth).mean() > 2 * np.abs(upright - truth).mean()


@pytest.mark.parametrize(("codec", "container"), [("h264", "mp4"), ("vp9", "webm")])
def test_vfr_timestamps_are_irregular(tmp_path: Path, codec: str, container: str) -> None:
    row, path = _make(tmp_path, codec=codec, container=container, vfr=True)
    assert row["vfr"] is True
    with av.open(str(path)) as c:
        tb = c.streams.video[0].time_base
        assert tb is not None
        times = [float(f.pts * tb) for f in c.decode(video=0) if f.pts is not None]
    gaps = np.diff(times)
    assert len(times) == 50 and np.all(gaps > 0)
    assert gaps.std() > 0.1 * gaps.mean()
    assert times[-1] == pytest.approx(row["duration"] - gaps.mean(), abs=0.05)
    assert Fraction(tb).denominator >= 1000


def test_audio_only_when_asked(tmp_path: Path) -> None:
    _, path = _make(tmp_path / "no", audio=False)
    with av.open(str(path)) as c:
        assert not c.streams.audio
    _, path = _make(tmp_path / "yes", audio=True)
    with av.open(str(path)) as c:
        assert len(c.streams.audio) == 1
        samples = sum(f.samples for f in c.decode(audio=0))
        assert samples / c.streams.audio[0].rate == pytest.approx(2.0, abs=0.1)


def test_bad_overrides_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, 1, "test", overrides={"colour": "red"}, workers=1, progress=False)
    with pytest.raises(ValueError):
        generate(tmp_path, 1, "test", overrides={"codec": "vp9", "container": "mp4"}, workers=1)
    with pytest.raises(ValueError):
        generate(tmp_path, 1, "valid", workers=1, progress=False)


@pytest.mark.parametrize(
    "tags",
    [
        ["star", "ring", "plain", "blink", "move_left"],
        ["cross", "triangle", "plain", "zoom_out", "shake"],
        ["square", "circle", "plain", "rotate"],
    ],
)
def test_object_masks_cover_exactly_the_drawn_instances(tags: list[str]) -> None:
    """At full resolution the masks are the pixels the frame draws over the plain background
    (a hidden blinking instance, the shake window and the dots included), per kind."""
    spec = _plain_spec(tags, duration=6.0)
    r, bg = Renderer(spec), spec.scenes[0].colors[0]
    kinds = ("circle", "square", "triangle", "star", "ring", "cross")
    size = (spec.encoding.width, spec.encoding.height)
    for i in (0, len(r) // 3, len(r) - 1):
        masks = r.object_masks(i, kinds, size)
        drawn = _object_mask(np.asarray(r.frame(i)), bg)
        covered = masks.max(axis=0) > 0.5
        assert (covered != drawn).mean() < 0.002  # edge pixels only
        present = {k for k, m in zip(kinds, masks, strict=True) if m.any()}
        assert present <= set(tags) and (present or not drawn.any())
    assert r.frame_at(float(r.times[5]) + 1e-4) == 5 and r.frame_at(-1.0) == 0
    full = r.object_masks(0, kinds, size).sum()
    small = r.object_masks(0, kinds, (size[0] // 8, size[1] // 8))  # area fractions
    assert small.max() <= 1.0 and abs(small.sum() * 64 - full) < 0.02 * full + 64
