"""Datasets behind one interface and a registry: `open_dataset(name, root, **options)`.

A `Dataset` is a vocabulary (label-index order), optional tag groups and `Clip` lists per
split. Loaders: `stb1` (vidtag synth manifests), `manifest` (any JSONL or CSV manifest),
`ucf101` (official layout and split lists) and `meitu` (AI Challenger 2018 short videos).
`write_manifest` turns any split back into the JSONL that `read_manifest` and the frame cache
read. Relative option paths are taken from `root`.
"""

from __future__ import annotations

import csv
import inspect
import json
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidtag.registry import Registry
from vidtag.tags import TAG_GROUPS, TAGS
from vidtag.train.manifest import Clip, multi_hot
from vidtag.train.video_metrics import clip_at_1, clips_per_video, video_at_1

__all__ = [
    "MEITU_TAGS",
    "MEITU_TAGS_ZH",
    "Dataset",
    "clip_at_1",
    "clips_per_video",
    "list_datasets",
    "open_dataset",
    "read_tags",
    "register_dataset",
    "video_at_1",
    "write_manifest",
    "write_tags",
]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    """Tags (label-index order), clips per split, optional tag groups; checked on creation.

    `skipped` counts, per split, the entries a loader dropped (e.g. missing videos)."""

    name: str
    tags: tuple[str, ...]
    splits: dict[str, list[Clip]]
    single_label: bool = False
    groups: dict[str, tuple[str, ...]] | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.tags)) != len(self.tags):
            dup = sorted({t for t in self.tags if self.tags.count(t) > 1})
            raise ValueError(f"{self.name}: duplicate tags in the vocabulary: {dup}")
        known = set(self.tags)
        for g, members in (self.groups or {}).items():
            if unknown := [t for t in members if t not in known]:
                raise ValueError(f"{self.name}: group {g!r} has unknown tags {unknown}")
        for split, clips in self.splits.items():
            for c in clips:
                if unknown := [t for t in c.tags if t not in known]:
                    raise ValueError(f"{self.name} {split}: {c.path}: unknown tags {unknown}")
                if self.single_label and len(c.tags) != 1:
                    raise ValueError(
                        f"{self.name} {split}: {c.path}: single-label dataset, got {c.tags}"
                    )

    def split(self, name: str) -> list[Clip]:
        """The clips of one split (KeyError naming the available ones)."""
        if name not in self.splits:
            raise KeyError(f"{self.name} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]

    def labels(self, split: str) -> np.ndarray:
        """Multi-hot (N, C) float32 targets of a split."""
        return multi_hot(self.split(split), self.tags)

    def class_indices(self, split: str) -> np.ndarray:
        """(N,) int64 class index of each clip of a single-label dataset."""
        if not self.single_label:
            raise ValueError(f"{self.name} is multi-label; use labels()")
        index = {t: i for i, t in enumerate(self.tags)}
        return np.array([index[c.tags[0]] for c in self.split(split)], dtype=np.int64)


Loader = Callable[..., Dataset]
_LOADERS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator registering `loader(root: Path, **options) -> Dataset` under `name`."""
    return _LOADERS.register(name)


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return _LOADERS.names()


def open_dataset(name: str, root: str | Path, **options: Any) -> Dataset:
    """Load dataset `name` found under `root`; an option the loader lacks is a ValueError."""
    loader = _LOADERS.get(name)
    params = inspect.signature(loader).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not open_ended and (unknown := sorted(set(options) - set(params) - {"root"})):
        accepted = sorted(p for p in params if p != "root")
        raise ValueError(f"dataset {name!r} takes no option {unknown}; options: {accepted}")
    return loader(Path(root).expanduser(), **options)


# ---------------------------------------------------------------- manifests and tag files


def write_manifest(clips: Iterable[Clip], path: str | Path) -> Path:
    """Write clips as a JSONL manifest (`read_manifest`'s format); paths under the manifest's
    folder are written relative to it, others absolute."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    folder = p.parent.resolve()
    with p.open("w", encoding="utf-8") as f:
        for c in clips:
            full = c.path.resolve()
            rel = full.relative_to(folder) if full.is_relative_to(folder) else full
            row = {"path": rel.as_posix(), "tags": list(c.tags)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return p


def write_tags(tags: Iterable[str], path: str | Path) -> Path:
    """Write a vocabulary file, one tag per line in label-index order."""
    p = Path(path)
    p.write_text("".join(f"{t}\n" for t in tags), encoding="utf-8")
    return p


def read_tags(path: str | Path) -> tuple[str, ...]:
    """A vocabulary file: one tag per line (blank lines and `#` comments ignored)."""
    p = Path(path)
    tags: list[str] = []
    for n, line in enumerate(_lines(p), 1):
        t = line.strip()
        if not t or t.startswith("#"):
            continue
        if t in tags:
            raise ValueError(f"{p}:{n}: duplicate tag {t!r}")
        tags.append(t)
    if not tags:
        raise ValueError(f"{p}: no tags")
    return tuple(tags)


def _lines(p: Path) -> list[str]:
    if not p.is_file():
        raise FileNotFoundError(f"missing file: {p}")
    return p.read_text(encoding="utf-8-sig").splitlines()


def _under(root: Path, p: str | Path) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else root / q


def _flag(value: bool | str | int) -> bool:
    if isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)


def _tag_list(value: Any, where: str) -> tuple[str, ...]:
    """Tags from a list of names or a string (JSON list, or names split on `|` or `;`)."""
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                value = json.loads(s)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: bad JSON tag list: {exc}") from exc
        else:
            value = re.split(r"[|;]", s)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{where}: tags must be a list of names, not {value!r}")
    return tuple(dict.fromkeys(t.strip() for t in value if t.strip()))


def _clip(folder: Path, raw: Any, tags: Any, where: str) -> Clip:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"{where}: missing path")
    q = Path(raw.strip())
    return Clip(q if q.is_absolute() else folder / q, _tag_list(tags, where))


def _read_rows(path: Path) -> list[tuple[Clip, dict[str, Any]]]:
    """(clip, raw row) of each entry of a JSONL or CSV manifest (by suffix; else sniffed)."""
    lines = _lines(path)
    first = next((ln.lstrip() for ln in lines if ln.strip()), "")
    is_csv = path.suffix.lower() in (".csv", ".tsv") or (
        path.suffix.lower() not in (".jsonl", ".json", ".ndjson") and not first.startswith("{")
    )
    out: list[tuple[Clip, dict[str, Any]]] = []
    if is_csv:
        reader = csv.DictReader(lines, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
        if not {"path", "tags"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: CSV header needs 'path' and 'tags', has {reader.fieldnames}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            out.append((_clip(path.parent, row["path"], row["tags"] or "", where), dict(row)))
        return out
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise TypeError("not an object")
            raw, tags = row["path"], row["tags"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{n}: bad manifest line: {exc}") from exc
        out.append((_clip(path.parent, raw, tags, f"{path}:{n}"), row))
    return out


def _check_vocabulary(clips: list[Clip], tags: tuple[str, ...], source: Path) -> None:
    known = set(tags)
    for c in clips:
        if unknown := [t for t in c.tags if t not in known]:
            raise ValueError(f"{source}: {c.path}: tags {unknown} are not in the vocabulary")


# ---------------------------------------------------------------- stb1 and manifest


@register_dataset("stb1")
def load_stb1(
    root: Path,
    train: str | Path | None = None,
    val: str | Path | None = None,
    test: str | Path | None = None,
) -> Dataset:
    """STB-1 clips from `vidtag synth` manifests. Without options: `root/<split>/manifest.jsonl`
    for each split present, else `root/manifest.jsonl` divided by its rows' `split` field."""
    given = {s: p for s, p in zip(SPLITS, (train, val, test), strict=True) if p is not None}
    paths = {s: _under(root, p) for s, p in given.items()}
    if not paths:
        paths = {s: root / s / "manifest.jsonl" for s in SPLITS}
        paths = {s: p for s, p in paths.items() if p.is_file()}
    splits: dict[str, list[Clip]] = {}
    if paths:
        for s, p in paths.items():
            splits[s] = [c for c, _ in _read_rows(p)]
            _check_vocabulary(splits[s], TAGS, p)
    else:
        single = root / "manifest.jsonl"
        if not single.is_file():
            raise FileNotFoundError(
                f"stb1: no manifest under {root} (<split>/manifest.jsonl or manifest.jsonl); "
                "pass train=, val= or test="
            )
        for c, row in _read_rows(single):
            name = row.get("split")
            if not isinstance(name, str):
                raise ValueError(f"{single}: {c.path}: row has no 'split'; pass train=/test=")
            splits.setdefault(name, []).append(c)
        for clips in splits.values():
            _check_vocabulary(clips, TAGS, single)
    return Dataset("stb1", TAGS, splits, single_label=False, groups=dict(TAG_GROUPS))


@register_dataset("manifest")
def load_manifest_dataset(
    root: Path,
    train: str | Path | None = None,
    val: str | Path | None = None,
    test: str | Path | None = None,
    tags: str | Path | None = None,
    single_label: bool | str = False,
) -> Dataset:
    """Any JSONL (`{"path", "tags": [...]}` lines) or CSV manifest (header with `path` and
    `tags`; tags split on `|` or `;`, or a JSON list); relative clip paths are taken from the
    manifest's folder. Vocabulary from the `tags` file (one per line), else the sorted union of
    all splits' tags, with a warning."""
    given = {s: p for s, p in zip(SPLITS, (train, val, test), strict=True) if p is not None}
    if not given:
        raise ValueError("manifest: pass at least one of train=, val=, test=")
    paths = {s: _under(root, p) for s, p in given.items()}
    splits = {s: [c for c, _ in _read_rows(p)] for s, p in paths.items()}
    if tags is not None:
        vocab = read_tags(_under(root, tags))
        for s, p in paths.items():
            _check_vocabulary(splits[s], vocab, p)
    else:
        vocab = tuple(sorted({t for clips in splits.values() for c in clips for t in c.tags}))
        warnings.warn(
            f"manifest: no tags= file; inferred a vocabulary of {len(vocab)} tags (sorted union "
            "of the manifests): label indices change if the tag set does",
            stacklevel=3,
        )
    return Dataset("manifest", vocab, splits, single_label=_flag(single_label))


# ---------------------------------------------------------------- UCF101

_UCF_FILE = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c(?P<clip>\d+)\.avi$", re.IGNORECASE)


def _ucf_classes(path: Path, num_classes: int | None) -> tuple[str, ...]:
    entries: dict[int, str] = {}
    for n, line in enumerate(_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{n}: expected '<index> <ClassName>', got {line!r}")
        i, name = int(parts[0]), parts[1]
        if i in entries or name in entries.values():
            raise ValueError(f"{path}:{n}: duplicate entry {line.strip()!r}")
        entries[i] = name
    if sorted(entries) != list(range(1, len(entries) + 1)):
        raise ValueError(f"{path}: indices must be 1..{len(entries)}, got {sorted(entries)}")
    if num_classes is not None and len(entries) != num_classes:
        raise ValueError(f"{path}: {len(entries)} classes, expected {num_classes}")
    return tuple(entries[i] for i in range(1, len(entries) + 1))


def _ucf_list(
    path: Path, classes: tuple[str, ...], videos: Path, strict: bool
) -> tuple[list[Clip], int]:
    index = {c: i for i, c in enumerate(classes, 1)}
    clips: list[Clip] = []
    missing: list[Path] = []
    for n, line in enumerate(_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{n}"
        rel = parts[0]
        if len(parts) > 2 or rel.count("/") != 1:
            raise ValueError(f"{where}: expected '<Class>/v_<Class>_gXX_cYY.avi [label]'")
        cls, name = rel.split("/")
        if cls not in index:
            raise ValueError(f"{where}: unknown class {cls!r} (not in classInd.txt)")
        m = _UCF_FILE.match(name)
        # casefold: the official lists pair HandstandPushups/ with v_HandStandPushups_*.avi
        if m is None or m["cls"].casefold() != cls.casefold():
            raise ValueError(f"{where}: {name!r} is not v_{cls}_gXX_cYY.avi")
        if len(parts) == 2 and parts[1] != str(index[cls]):
            raise ValueError(
                f"{where}: label {parts[1]} but class {cls!r} is {index[cls]} in classInd.txt"
            )
        video = videos / cls / name
        if not video.is_file():
            missing.append(video)
            continue
        clips.append(Clip(video, (cls,)))
    if missing and strict:
        raise FileNotFoundError(
            f"{path}: {len(missing)} listed videos are missing, e.g. {missing[0]}"
        )
    return clips, len(missing)


@register_dataset("ucf101")
def load_ucf101(
    root: Path,
    split: int | str = 1,
    lists: str | Path | None = None,
    num_classes: int | str | None = 101,
    strict: bool | str = True,
) -> Dataset:
    """UCF101: videos in `root/UCF-101/<Class>/` (or `root/<Class>/`), split lists in
    `root/ucfTrainTestlist/` (or `lists=`): classInd.txt, trainlist0{split}.txt (train) and
    testlist0{split}.txt (test). Single-label, classes in classInd order. A missing listed
    video is an error unless `strict=False` (then skipped and counted)."""
    k = int(split)
    if k not in (1, 2, 3):
        raise ValueError(f"ucf101: split must be 1, 2 or 3, not {split!r}")
    list_dir = _under(root, lists) if lists is not None else root / "ucfTrainTestlist"
    if not list_dir.is_dir():
        raise FileNotFoundError(f"ucf101: missing split-list folder {list_dir}")
    videos = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    classes = _ucf_classes(
        list_dir / "classInd.txt", None if num_classes is None else int(num_classes)
    )
    splits: dict[str, list[Clip]] = {}
    skipped: dict[str, int] = {}
    for s, stem in (("train", "trainlist"), ("test", "testlist")):
        clips, missing = _ucf_list(list_dir / f"{stem}0{k}.txt", classes, videos, _flag(strict))
        splits[s] = clips
        if missing:
            skipped[s] = missing
            warnings.warn(f"ucf101 {s}: skipped {missing} missing videos", stacklevel=3)
    return Dataset("ucf101", classes, splits, single_label=True, skipped=skipped)


# ---------------------------------------------------------------- Meitu (AI Challenger 2018)

# The 63 tags, index = label id (0-based), from the organisers' "标签映射表" (tag mapping table)
# in github.com/AIChallenger/AI_Challenger_2018, file
# Evaluation/short_video_real_time_classification_eval/README.md, commit
# a9082aed96f05e0876c953e4f330281dd6054d16; English names as written there, Chinese alongside.
_MEITU_TABLE: tuple[tuple[str, str], ...] = (
    ("Dog", "狗"),
    ("Cat", "猫"),
    ("Mouse", "鼠"),
    ("Rabbit", "兔子"),
    ("Bird", "鸟"),
    ("Scenery", "风景"),
    ("Local Customs", "风土人情"),
    ("Dressing", "穿秀"),
    ("Baby", "宝宝"),
    ("Selfie-Male", "男生自拍"),
    ("Selfie-Female", "女生自拍"),
    ("Dessert Making", "做甜品"),
    ("Seafood Making", "做海鲜"),
    ("Streetside Snacks", "街边小吃"),
    ("Drinks", "饮品"),
    ("Hot Pot", "火锅"),
    ("Claw Crane", "抓娃娃"),
    ("Handsign Dance", "手势舞"),
    ("Street Dance", "街舞"),
    ("International Dance", "国标舞"),
    ("Pole Dance", "钢管舞"),
    ("Ballet", "芭蕾舞"),
    ("Square Dancing", "广场舞"),
    ("Folk Dance", "民族舞"),
    ("Drawing", "绘画"),
    ("Handwriting", "手写文字"),
    ("Latte Art", "咖啡拉花"),
    ("Sand Drawing", "沙画"),
    ("Slime", "史莱姆"),
    ("Origami", "折纸"),
    ("Knitting", "编织"),
    ("Hair Accessory", "发饰"),
    ("Pottery", "陶艺"),
    ("Phone Case", "手机壳"),
    ("Drums", "打鼓"),
    ("Guitar", "弹吉他"),
    ("Piano", "弹钢琴"),
    ("Guzheng", "弹古筝"),
    ("Violin", "拉小提琴"),
    ("Cello", "拉大提琴"),
    ("Hulusi", "吹葫芦丝"),
    ("Singing", "唱歌"),
    ("Games", "游戏"),
    ("Entertainment", "娱乐"),
    ("Animation", "动漫"),
    ("Word Art Voicing", "文字艺术配音"),
    ("Yoga", "瑜伽"),
    ("Fitness", "健身"),
    ("Skateboard", "滑板"),
    ("Basketball", "篮球"),
    ("Parkour", "跑酷"),
    ("Diving", "潜水"),
    ("Billiards", "台球"),
    ("Football", "足球"),
    ("Badminton", "羽毛球"),
    ("Table Tennis", "乒乓球"),
    ("Brow Painting", "画眉"),
    ("Eyeliner", "画眼"),
    ("Skincare", "护肤"),
    ("Lipgloss", "唇彩"),
    ("Makeup Removal", "卸妆"),
    ("Nail Cosmetic", "美甲"),
    ("Hair Cosmetic", "美发"),
)
MEITU_TAGS: tuple[str, ...] = tuple(
    en.lower().replace("-", "_").replace(" ", "_") for en, _ in _MEITU_TABLE
)
MEITU_TAGS_ZH: tuple[str, ...] = tuple(zh for _, zh in _MEITU_TABLE)


def _meitu_labels(
    path: Path, videos: Path, vocab: tuple[str, ...], strict: bool
) -> tuple[list[Clip], int]:
    clips: list[Clip] = []
    missing: list[Path] = []
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        parts = [p.strip() for p in line.split(",")]
        while parts and not parts[-1]:
            parts.pop()
        if len(parts) < 2 or not parts[0]:
            raise ValueError(f"{where}: expected '<id>.mp4,<tag>[,<tag>...]', got {line!r}")
        ids: list[int] = []
        for t in parts[1:]:
            if not re.fullmatch(r"[+-]?\d+", t):
                raise ValueError(f"{where}: tag {t!r} is not an integer")
            i = int(t)
            if not 0 <= i < len(vocab):
                raise ValueError(
                    f"{where}: tag index {i} outside [0, {len(vocab) - 1}] (0-based tag ids)"
                )
            ids.append(i)
        video = _under(videos, parts[0])
        if not video.is_file():
            missing.append(video)
            continue
        clips.append(Clip(video, tuple(dict.fromkeys(vocab[i] for i in ids))))
    if missing and strict:
        raise FileNotFoundError(f"{path}: {len(missing)} videos are missing, e.g. {missing[0]}")
    return clips, len(missing)


def _find_one(root: Path, pattern: str) -> Path | None:
    found = sorted(p for p in root.glob(pattern) if p.is_file())
    if len(found) > 1:
        raise ValueError(f"meitu: several files match {root / pattern}: pass the one to use")
    return found[0] if found else None


@register_dataset("meitu")
def load_meitu(
    root: Path,
    train_labels: str | Path | None = None,
    val_labels: str | Path | None = None,
    videos: str | Path | None = None,
    train_videos: str | Path | None = None,
    val_videos: str | Path | None = None,
    names: str = "en",
    strict: bool | str = False,
) -> Dataset:
    """AI Challenger 2018 short-video classification (Meitu): label files of lines
    `<id>.mp4,<tag>[,<tag>...]` with 0-based tag ids in [0, 62] (any file name; without options
    the `*trainingset_annotations*` / `*validationset_annotations*` files in root). Videos in
    `videos=` (default root), or per split in `train_videos=` / `val_videos=`. Listed videos
    that are missing are skipped and counted (`strict=True` raises). `names`: "en" (snake-case
    English names), "zh" (the organisers' Chinese names) or "index" (tag_00..tag_62)."""
    if names == "en":
        vocab = MEITU_TAGS
    elif names == "zh":
        vocab = MEITU_TAGS_ZH
    elif names == "index":
        vocab = tuple(f"tag_{i:02d}" for i in range(len(MEITU_TAGS)))
    else:
        raise ValueError(f"meitu: names must be 'en', 'zh' or 'index', not {names!r}")
    files: dict[str, Path | None] = {
        "train": _under(root, train_labels) if train_labels is not None else None,
        "val": _under(root, val_labels) if val_labels is not None else None,
    }
    if train_labels is None and val_labels is None:
        files = {
            "train": _find_one(root, "*trainingset_annotations*"),
            "val": _find_one(root, "*validationset_annotations*"),
        }
        if not any(files.values()):
            raise FileNotFoundError(
                f"meitu: no *trainingset_annotations* or *validationset_annotations* file in "
                f"{root}; pass train_labels= or val_labels="
            )
    base = _under(root, videos) if videos is not None else root
    dirs = {
        "train": _under(root, train_videos) if train_videos is not None else base,
        "val": _under(root, val_videos) if val_videos is not None else base,
    }
    splits: dict[str, list[Clip]] = {}
    skipped: dict[str, int] = {}
    for s, f in files.items():
        if f is None:
            continue
        if not dirs[s].is_dir():
            raise FileNotFoundError(f"meitu {s}: missing video folder {dirs[s]}")
        splits[s], missing = _meitu_labels(f, dirs[s], vocab, _flag(strict))
        if missing:
            skipped[s] = missing
            warnings.warn(
                f"meitu {s}: skipped {missing} of {missing + len(splits[s])} entries of {f} "
                f"whose video is missing in {dirs[s]} (strict=True raises)",
                stacklevel=3,
            )
    return Dataset("meitu", vocab, splits, single_label=False, skipped=skipped)
