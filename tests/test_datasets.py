"""Dataset loaders in their real on-disk layouts, the registry, manifest round trips, Clip@1 and
Video@1. UCF101 uses tiny real clips (the frame-cache round trip decodes them); stb1, manifest
and meitu use empty placeholder files (those loaders never open a video)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from media import encode_clip

from vidtag.decode import SamplingSpec
from vidtag.registry import UnknownName
from vidtag.tags import TAG_GROUPS, TAGS
from vidtag.train.cache import build_cache
from vidtag.train.datasets import (
    MEITU_TAGS,
    MEITU_TAGS_ZH,
    Dataset,
    list_datasets,
    open_dataset,
    register_dataset,
    write_manifest,
    write_tags,
)
from vidtag.train.manifest import Clip, read_manifest
from vidtag.train.video_metrics import clip_at_1, clips_per_video, video_at_1


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _resolved(clips: list[Clip]) -> list[tuple[Path, tuple[str, ...]]]:
    return [(c.path.resolve(), c.tags) for c in clips]


# ---------------------------------------------------------------- registry


def test_registry_names_and_errors(tmp_path: Path) -> None:
    assert {"stb1", "manifest", "ucf101", "meitu"} <= set(list_datasets())
    with pytest.raises(UnknownName, match="unknown dataset 'nope'"):
        open_dataset("nope", tmp_path)
    with pytest.raises(ValueError, match=r"takes no option \['splitt'\]"):
        open_dataset("ucf101", tmp_path, splitt=2)
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset("stb1")(lambda root: None)  # type: ignore[arg-type,return-value]


def test_register_custom_dataset(tmp_path: Path) -> None:
    @register_dataset("test-two-clips")
    def _two(root: Path, tag: str = "a") -> Dataset:
        return Dataset("two", (tag,), {"train": [Clip(root / "x.mp4", (tag,))] * 2})

    ds = open_dataset("test-two-clips", tmp_path, tag="b")
    assert ds.tags == ("b",) and len(ds.split("train")) == 2
    assert ds.labels("train").tolist() == [[1.0], [1.0]]
    with pytest.raises(KeyError, match="has no split 'val'"):
        ds.split("val")


def test_dataset_validates_clips() -> None:
    with pytest.raises(ValueError, match="unknown tags"):
        Dataset("d", ("a",), {"train": [Clip(Path("x"), ("b",))]})
    with pytest.raises(ValueError, match="single-label"):
        Dataset("d", ("a", "b"), {"train": [Clip(Path("x"), ("a", "b"))]}, single_label=True)
    with pytest.raises(ValueError, match="duplicate tags"):
        Dataset("d", ("a", "a"), {})
    with pytest.raises(ValueError, match="group 'g' has unknown"):
        Dataset("d", ("a",), {}, groups={"g": ("z",)})


# ---------------------------------------------------------------- stb1


def _synth_row(name: str, tags: list[str], split: str) -> dict[str, object]:
    """A manifest line as `vidtag synth` writes it (vidtag.synth.generate.manifest_row)."""
    return {
        "path": name,
        "tags": tags,
        "duration": 6.0,
        "width": 540,
        "height": 960,
        "fps": 25,
        "vfr": False,
        "codec": "h264",
        "container": "mp4",
        "gop": "1s",
        "crf": 24,
        "rotation": 0,
        "audio": False,
        "split": split,
        "seed": 0,
        "index": 0,
    }


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_stb1_per_split_folders(tmp_path: Path) -> None:
    for split, tags in (("train", ["circle", "plain", "move_left"]), ("test", ["star", "cut"])):
        _touch(tmp_path / split / f"stb1-{split}-00000.mp4")
        _write_jsonl(
            tmp_path / split / "manifest.jsonl",
            [_synth_row(f"stb1-{split}-00000.mp4", tags, split)],
        )
    ds = open_dataset("stb1", tmp_path)
    assert ds.tags == TAGS and ds.groups == TAG_GROUPS and not ds.single_label
    assert sorted(ds.splits) == ["test", "train"]
    assert ds.split("train")[0].path == tmp_path / "train" / "stb1-train-00000.mp4"
    assert ds.split("test")[0].tags == ("star", "cut")
    y = ds.labels("train")
    assert y.shape == (1, len(TAGS)) and y[0, TAGS.index("move_left")] == 1.0 and y.sum() == 3


def test_stb1_options_and_single_manifest(tmp_path: Path) -> None:
    rows = [
        _synth_row("a.mp4", ["circle"], "train"),
        _synth_row("b.mp4", ["ring"], "test"),
        _synth_row("c.mp4", ["square", "shake"], "train"),
    ]
    _write_jsonl(tmp_path / "manifest.jsonl", rows)
    ds = open_dataset("stb1", tmp_path)
    assert [c.path.name for c in ds.split("train")] == ["a.mp4", "c.mp4"]
    assert [c.path.name for c in ds.split("test")] == ["b.mp4"]
    only = open_dataset("stb1", tmp_path, val="manifest.jsonl")
    assert list(only.splits) == ["val"] and len(only.split("val")) == 3


def test_stb1_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="stb1: no manifest"):
        open_dataset("stb1", tmp_path)
    _write_jsonl(tmp_path / "bad.jsonl", [_synth_row("a.mp4", ["circle", "unicorn"], "train")])
    with pytest.raises(ValueError, match=r"bad\.jsonl.*\['unicorn'\] are not in the vocabulary"):
        open_dataset("stb1", tmp_path, train="bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"path": "a.mp4", "tags": ["circle"]}\n{oops\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: bad manifest line"):
        open_dataset("stb1", tmp_path, train="broken.jsonl")


# ---------------------------------------------------------------- manifest (CSV / JSONL)


def test_manifest_csv_and_jsonl_with_tags_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    absolute = _touch(tmp_path / "elsewhere" / "z.mp4")
    (data / "train.csv").write_text(
        "id,path,tags\n"
        "1,clips/a.mp4,cat|outdoor\n"
        "2,clips/b.mp4, dog ; indoor \n"
        f'3,{absolute},"[""cat"", ""dog""]"\n'
        "4,clips/c.mp4,\n"
    )
    _write_jsonl(data / "val.jsonl", [{"path": "clips/d.mp4", "tags": ["indoor"], "extra": 1}])
    (data / "tags.txt").write_text("# vocabulary\ndog\ncat\n\nindoor\noutdoor\n")
    ds = open_dataset(
        "manifest", data, train="train.csv", val="val.jsonl", tags="tags.txt", single_label="no"
    )
    assert ds.tags == ("dog", "cat", "indoor", "outdoor")
    assert [(c.path, c.tags) for c in ds.split("train")] == [
        (data / "clips" / "a.mp4", ("cat", "outdoor")),
        (data / "clips" / "b.mp4", ("dog", "indoor")),
        (absolute, ("cat", "dog")),
        (data / "clips" / "c.mp4", ()),
    ]
    assert ds.split("val") == [Clip(data / "clips" / "d.mp4", ("indoor",))]
    assert ds.labels("train").tolist()[1] == [1.0, 0.0, 1.0, 0.0]


def test_manifest_inferred_vocabulary_warns(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path;tags\n")  # a header without a comma: not CSV columns
    with pytest.raises(ValueError, match="CSV header needs 'path' and 'tags'"):
        open_dataset("manifest", tmp_path, train="m.csv")
    (tmp_path / "m.csv").write_text("tags,path\nb;a,x.mp4\nc,y.mp4\n")
    with pytest.warns(UserWarning, match="inferred a vocabulary of 3 tags"):
        ds = open_dataset("manifest", tmp_path, test="m.csv")
    assert ds.tags == ("a", "b", "c") and list(ds.splits) == ["test"]


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one of train="):
        open_dataset("manifest", tmp_path)
    (tmp_path / "t.txt").write_text("a\nb\n")
    (tmp_path / "m.jsonl").write_text('{"path": "x.mp4", "tags": ["a", "c"]}\n')
    with pytest.raises(ValueError, match=r"\['c'\] are not in the vocabulary"):
        open_dataset("manifest", tmp_path, train="m.jsonl", tags="t.txt")
    (tmp_path / "m.jsonl").write_text('{"path": "x.mp4", "tags": ["a", "b"]}\n')
    with pytest.raises(ValueError, match="single-label"):
        open_dataset("manifest", tmp_path, train="m.jsonl", tags="t.txt", single_label=True)
    (tmp_path / "m.jsonl").write_text('\n{"path": "x.mp4", "tags": [1]}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2: tags must be a list of names"):
        open_dataset("manifest", tmp_path, train="m.jsonl", tags="t.txt")
    (tmp_path / "m.jsonl").write_text('{"path": "x.mp4", "tags": "a|b"}\n')
    assert open_dataset("manifest", tmp_path, train="m.jsonl", tags="t.txt").labels("train").all()
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"dup\.txt:3: duplicate tag 'a'"):
        open_dataset("manifest", tmp_path, train="m.jsonl", tags="dup.txt")
    with pytest.raises(FileNotFoundError, match="missing file"):
        open_dataset("manifest", tmp_path, train="absent.csv", tags="t.txt")


# ---------------------------------------------------------------- UCF101

# classInd order deliberately not alphabetical: the vocabulary must follow classInd.
UCF_CLASSES = ("Basketball", "ApplyEyeMakeup", "HandstandPushups")
# (class, group, clip); the official lists pair HandstandPushups/ with v_HandStandPushups_*.
UCF_VIDEOS = [
    ("Basketball", 1, 1),
    ("Basketball", 2, 1),
    ("Basketball", 2, 2),
    ("ApplyEyeMakeup", 1, 1),
    ("ApplyEyeMakeup", 1, 2),
    ("ApplyEyeMakeup", 2, 1),
    ("HandstandPushups", 1, 1),
    ("HandstandPushups", 2, 1),
]


def _ucf_name(cls: str, g: int, c: int) -> str:
    stem = "HandStandPushups" if cls == "HandstandPushups" else cls
    return f"v_{stem}_g{g:02d}_c{c:02d}.avi"


def _ucf_lists(lists: Path, splits: tuple[int, ...] = (1, 2)) -> None:
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text(
        "".join(f"{i} {c}\r\n" for i, c in enumerate(UCF_CLASSES, 1))
    )
    for k in splits:
        test_group = 1 if k == 1 else 2  # split 1 tests on group 1, split 2 on group 2
        train = [v for v in UCF_VIDEOS if v[1] != test_group]
        test = [v for v in UCF_VIDEOS if v[1] == test_group]
        (lists / f"trainlist0{k}.txt").write_text(
            "".join(
                f"{cls}/{_ucf_name(cls, g, c)} {UCF_CLASSES.index(cls) + 1}\r\n"
                for cls, g, c in train
            )
        )
        (lists / f"testlist0{k}.txt").write_text(
            "".join(f"{cls}/{_ucf_name(cls, g, c)}\r\n" for cls, g, c in test)
        )


def _ucf_layout(root: Path, *, nested: bool = True, real: bool = False) -> Path:
    videos = root / "UCF-101" if nested else root
    for cls, g, c in UCF_VIDEOS:
        path = videos / cls / _ucf_name(cls, g, c)
        if real:
            path.parent.mkdir(parents=True, exist_ok=True)
            encode_clip(path, width=64, height=48, fps=10, seconds=1.0, bframes=0)
        else:
            _touch(path)
    _ucf_lists(root / "ucfTrainTestlist")
    return root


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official layout with 8 tiny real clips (64x48, 1 s, 10 fps)."""
    return _ucf_layout(tmp_path_factory.mktemp("ucf"), real=True)


def test_ucf101_official_layout(ucf_root: Path) -> None:
    ds = open_dataset("ucf101", ucf_root, num_classes=3)
    assert ds.tags == UCF_CLASSES and ds.single_label and ds.skipped == {}
    assert sorted(ds.splits) == ["test", "train"]
    train, test = ds.split("train"), ds.split("test")
    assert [c.path.name for c in test] == [
        "v_Basketball_g01_c01.avi",
        "v_ApplyEyeMakeup_g01_c01.avi",
        "v_ApplyEyeMakeup_g01_c02.avi",
        "v_HandStandPushups_g01_c01.avi",
    ]
    assert all(c.path.parent == ucf_root / "UCF-101" / c.tags[0] for c in train + test)
    assert {c.path.name.split("_g")[1][:2] for c in train} == {"02"}
    assert ds.class_indices("train").tolist() == [0, 0, 1, 2]
    assert ds.class_indices("test").tolist() == [0, 1, 1, 2]
    assert ds.labels("test").tolist()[1] == [0.0, 1.0, 0.0]
    two = open_dataset("ucf101", ucf_root, split="2", num_classes=3)
    assert _resolved(two.split("train")) == _resolved(test)
    assert _resolved(two.split("test")) == _resolved(train)


def test_ucf101_videos_directly_under_root(tmp_path: Path) -> None:
    root = _ucf_layout(tmp_path, nested=False)
    ds = open_dataset("ucf101", root, num_classes=3)
    assert ds.split("train")[0].path == root / "Basketball" / "v_Basketball_g02_c01.avi"
    assert len(ds.split("train")) == 4 and len(ds.split("test")) == 4


def test_ucf101_errors(tmp_path: Path) -> None:
    root = _ucf_layout(tmp_path)
    lists = root / "ucfTrainTestlist"
    with pytest.raises(ValueError, match="3 classes, expected 101"):
        open_dataset("ucf101", root)
    with pytest.raises(ValueError, match="split must be 1, 2 or 3"):
        open_dataset("ucf101", root, split=4, num_classes=3)
    with pytest.raises(FileNotFoundError, match=r"trainlist03\.txt"):
        open_dataset("ucf101", root, split=3, num_classes=3)
    with pytest.raises(FileNotFoundError, match="missing split-list folder"):
        open_dataset("ucf101", root, lists="nowhere", num_classes=3)

    test01 = (lists / "testlist01.txt").read_text()
    (lists / "testlist01.txt").write_text(test01 + "Juggling/v_Juggling_g01_c01.avi\r\n")
    with pytest.raises(ValueError, match=r"testlist01\.txt:5: unknown class 'Juggling'"):
        open_dataset("ucf101", root, num_classes=3)
    (lists / "testlist01.txt").write_text(test01)

    train01 = (lists / "trainlist01.txt").read_text()
    (lists / "trainlist01.txt").write_text(train01.replace(".avi 1", ".avi 2", 1))
    with pytest.raises(ValueError, match=r"trainlist01\.txt:1: label 2 but class 'Basketball'"):
        open_dataset("ucf101", root, num_classes=3)
    (lists / "trainlist01.txt").write_text(train01.replace("_g02_c01", "_g02_c1x", 1))
    with pytest.raises(ValueError, match=r"trainlist01\.txt:1: .* is not v_Basketball_gXX_cYY"):
        open_dataset("ucf101", root, num_classes=3)
    (lists / "trainlist01.txt").write_text(train01)

    (root / "UCF-101" / "Basketball" / "v_Basketball_g02_c02.avi").unlink()
    with pytest.raises(FileNotFoundError, match="1 listed videos are missing"):
        open_dataset("ucf101", root, num_classes=3)
    with pytest.warns(UserWarning, match="ucf101 train: skipped 1 missing videos"):
        ds = open_dataset("ucf101", root, num_classes=3, strict=False)
    assert ds.skipped == {"train": 1} and len(ds.split("train")) == 3

    (lists / "classInd.txt").write_text("1 Basketball\n3 ApplyEyeMakeup\n")
    with pytest.raises(ValueError, match=r"indices must be 1\.\.2"):
        open_dataset("ucf101", root, num_classes=None)
    (lists / "classInd.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing file: .*classInd\.txt"):
        open_dataset("ucf101", root, num_classes=3)


# ---------------------------------------------------------------- Meitu


def _meitu_root(root: Path) -> Path:
    for name in ("100.mp4", "101.mp4", "102.mp4", "200.mp4"):
        _touch(root / "videos" / name)
    (root / "short_video_trainingset_annotations.txt.082902").write_text(
        "100.mp4,0\n101.mp4,62,5\n102.mp4,3,3,\n103.mp4,1\n"
    )
    (root / "short_video_validationset_annotations.txt.0829").write_text("200.mp4,44\n")
    return root


def test_meitu_tag_table() -> None:
    assert len(MEITU_TAGS) == len(set(MEITU_TAGS)) == len(MEITU_TAGS_ZH) == 63
    assert (MEITU_TAGS[0], MEITU_TAGS[9], MEITU_TAGS[44], MEITU_TAGS[62]) == (
        "dog",
        "selfie_male",
        "animation",
        "hair_cosmetic",
    )
    assert (MEITU_TAGS_ZH[0], MEITU_TAGS_ZH[23], MEITU_TAGS_ZH[62]) == ("狗", "民族舞", "美发")


def test_meitu_labels_are_zero_based(tmp_path: Path) -> None:
    root = _meitu_root(tmp_path)
    with pytest.warns(UserWarning, match="meitu train: skipped 1 of 4 entries"):
        ds = open_dataset("meitu", root, videos="videos")
    assert ds.tags == MEITU_TAGS and not ds.single_label and ds.groups is None
    assert ds.skipped == {"train": 1}
    assert [(c.path, c.tags) for c in ds.split("train")] == [
        (root / "videos" / "100.mp4", ("dog",)),
        (root / "videos" / "101.mp4", ("hair_cosmetic", "scenery")),
        (root / "videos" / "102.mp4", ("rabbit",)),
    ]
    assert ds.split("val")[0].tags == ("animation",)
    y = ds.labels("train")
    assert y.shape == (3, 63) and y[0, 0] == 1 and y[1, 62] == 1 and y[1, 5] == 1 and y.sum() == 4


def test_meitu_options(tmp_path: Path) -> None:
    root = _meitu_root(tmp_path)
    (root / "labels.csv").write_text("200.mp4,1,2\n")
    ds = open_dataset("meitu", root, val_labels="labels.csv", videos="videos", names="zh")
    assert list(ds.splits) == ["val"] and ds.split("val")[0].tags == ("猫", "鼠")
    ds = open_dataset(
        "meitu", root, val_labels="labels.csv", val_videos=root / "videos", names="index"
    )
    assert ds.split("val")[0].tags == ("tag_01", "tag_02") and ds.tags[-1] == "tag_62"
    with pytest.raises(
        FileNotFoundError, match=r"labels\.csv: 1 videos are missing, e\.g\. .*200\.mp4"
    ):
        open_dataset("meitu", root, val_labels="labels.csv", strict=True)
    with pytest.raises(ValueError, match="names must be"):
        open_dataset("meitu", root, val_labels="labels.csv", names="fr")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("101.mp4,63", r"a\.txt:2: tag index 63 outside \[0, 62\]"),
        ("101.mp4,4,-1", r"a\.txt:2: tag index -1 outside \[0, 62\]"),
        ("101.mp4,dog", r"a\.txt:2: tag 'dog' is not an integer"),
        ("101.mp4", r"a\.txt:2: expected '<id>\.mp4,<tag>"),
    ],
)
def test_meitu_bad_lines(tmp_path: Path, line: str, message: str) -> None:
    root = _meitu_root(tmp_path)
    (root / "a.txt").write_text(f"100.mp4,0\n{line}\n")
    with pytest.raises(ValueError, match=message):
        open_dataset("meitu", root, train_labels="a.txt", videos="videos")


def test_meitu_discovery_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no \\*trainingset_annotations"):
        open_dataset("meitu", tmp_path)
    root = _meitu_root(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing video folder"):
        open_dataset("meitu", root, videos="clips")
    (root / "short_video_trainingset_annotations.txt.0829").write_text("100.mp4,0\n")
    with pytest.raises(ValueError, match="several files match"):
        open_dataset("meitu", root, videos="videos")


# ---------------------------------------------------------------- Clip@1 / Video@1


def test_clip_and_video_at_1_hand_computed() -> None:
    # Video "a" (label 0): clips vote 0, 1, 1 but their mean [0.5, 0.4167, 0.0833] says 0.
    # Video "b" (label 2): clips vote 2, 0; mean [0.35, 0.25, 0.4] says 2.
    # Video "c" (label 1): its one clip votes 0. Rows interleaved: grouping is by id.
    scores = np.array(
        [
            [0.9, 0.1, 0.0],  # a
            [0.1, 0.2, 0.7],  # b
            [0.2, 0.7, 0.1],  # a
            [0.5, 0.3, 0.2],  # c
            [0.4, 0.45, 0.15],  # a
            [0.6, 0.3, 0.1],  # b
        ]
    )
    ids = ["a", "b", "a", "c", "a", "b"]
    labels = [0, 2, 0, 1, 0, 2]
    assert clip_at_1(scores, ids, labels) == pytest.approx(2 / 6)
    assert video_at_1(scores, ids, labels) == pytest.approx(2 / 3)
    assert video_at_1(scores[[0, 2, 4]], ["a"] * 3, [0] * 3) == 1.0
    assert clip_at_1(scores[[0, 2, 4]], ["a"] * 3, [0] * 3) == pytest.approx(1 / 3)


def test_clip_metrics_reject_bad_input() -> None:
    s = np.eye(3)
    with pytest.raises(ValueError, match="clips disagree on the label"):
        video_at_1(s, [7, 7, 8], [0, 1, 2])
    with pytest.raises(ValueError, match="differ in length"):
        clip_at_1(s, [1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        clip_at_1(s, [1, 2, 3], [0, 1, 3])
    with pytest.raises(ValueError, match="no clips"):
        video_at_1(np.zeros((0, 3)), [], np.zeros(0, dtype=int))


def test_clips_per_video() -> None:
    assert clips_per_video(10.0, 10, 1.0) == pytest.approx([float(i) for i in range(10)])
    assert clips_per_video(4.0, 3, 2.0) == pytest.approx([0.0, 1.0, 2.0])
    assert clips_per_video(10.0, 1, 2.0) == pytest.approx([4.0])
    assert clips_per_video(1.0, 5, 2.0) == [0.0] * 5
    with pytest.raises(ValueError, match="n must be >= 1"):
        clips_per_video(10.0, 0, 1.0)


# ---------------------------------------------------------------- read_manifest compatibility


def test_written_manifest_feeds_read_manifest_and_cache(ucf_root: Path, tmp_path: Path) -> None:
    ds = open_dataset("ucf101", ucf_root, num_classes=3)
    outside = write_manifest(ds.split("train"), tmp_path / "out" / "train.jsonl")
    assert _resolved(read_manifest(outside)) == _resolved(ds.split("train"))
    assert all(
        Path(json.loads(ln)["path"]).is_absolute() for ln in outside.read_text().splitlines()
    )

    inside = write_manifest(ds.split("test"), ucf_root / "test-split1.jsonl")
    rows = [json.loads(ln) for ln in inside.read_text().splitlines()]
    assert rows[0] == {
        "path": "UCF-101/Basketball/v_Basketball_g01_c01.avi",
        "tags": ["Basketball"],
    }
    assert _resolved(read_manifest(inside)) == _resolved(ds.split("test"))

    tags = write_tags(ds.tags, tmp_path / "classes.txt")
    again = open_dataset("manifest", tmp_path, test=inside, tags=tags.name, single_label=True)
    assert again.tags == ds.tags and _resolved(again.split("test")) == _resolved(ds.split("test"))

    spec = SamplingSpec(frames=4, height=32, width=32)
    cache = build_cache(outside, tmp_path / "cache", spec, workers=1, progress=False)
    frames = np.load(cache / "frames.npy")
    assert frames.shape == (4, 4, 32, 32, 3) and frames.dtype == np.uint8
    assert json.loads((cache / "spec.json").read_text())["errors"] == []
    cached = [json.loads(ln) for ln in (cache / "clips.jsonl").read_text().splitlines()]
    assert [r["tags"] for r in cached] == [[c.tags[0]] for c in ds.split("train")]


def test_a_cache_of_which_no_clip_decodes_is_an_error(tmp_path: Path) -> None:
    """Paths relative to the wrong folder: one clear error naming the first failure, and no
    spec.json left behind to pass the broken cache off as finished."""
    from vidtag.decode import SamplingSpec
    from vidtag.errors import DatasetError
    from vidtag.train.cache import build_cache

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "gone.mp4", "tags": ["circle"]}\n')
    out = tmp_path / "cache"
    out.mkdir()
    (out / "spec.json").write_text("{}")  # an earlier cache's stamp
    with pytest.raises(DatasetError, match=r"none of the 1 clips .*/gone\.mp4"):
        build_cache(manifest, out, SamplingSpec(frames=2, height=16, width=16), workers=1)
    assert not (out / "spec.json").exists()
