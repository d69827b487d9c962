"""Which tags a clip has: object kinds, instances with their motions, scenes and camera.

The group rules of SYNTH_SPEC.md hold for every result: >= 1 object, 1 scene (2 iff `cut`),
>= 1 moving instance, <= 1 camera tag, 3-7 tags in all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vidtag.tags import TAG_GROUPS

OBJECTS = TAG_GROUPS["object"]
SCENES = TAG_GROUPS["scene"]
MOTIONS = TAG_GROUPS["motion"]
CAMERAS = TAG_GROUPS["camera"]
MIN_TAGS, MAX_TAGS = 3, 7
MAX_PER_KIND = 2
P_STATIC = 0.25


@dataclass(frozen=True)
class Structure:
    """`instances` holds (shape, motion or None) per drawn object."""

    instances: tuple[tuple[str, str | None], ...]
    scenes: tuple[str, ...]
    camera: str | None

    @property
    def tags(self) -> set[str]:
        tags = {s for s, _ in self.instances} | set(self.scenes)
        tags |= {m for _, m in self.instances if m is not None}
        if self.camera is not None:
            tags.add(self.camera)
        return tags


def check_tags(tags: set[str]) -> None:
    """Raise ValueError unless `tags` is a valid STB-1 tag set."""
    groups = {g: tags & set(ts) for g, ts in TAG_GROUPS.items()}
    unknown = tags - set().union(*TAG_GROUPS.values())
    if unknown:
        raise ValueError(f"unknown tags {sorted(unknown)}")
    if not MIN_TAGS <= len(tags) <= MAX_TAGS:
        raise ValueError(f"{len(tags)} tags; a clip has {MIN_TAGS}-{MAX_TAGS}")
    if not 1 <= len(groups["object"]) <= 2 or not 1 <= len(groups["motion"]) <= 4:
        raise ValueError("need 1-2 object kinds and 1-4 motions")
    if len(groups["camera"]) > 1:
        raise ValueError("at most one camera tag")
    if len(groups["scene"]) != (2 if "cut" in tags else 1):
        raise ValueError("two scenes exactly when the clip has a cut")
    if len(groups["motion"]) > MAX_PER_KIND * len(groups["object"]):
        raise ValueError("more motions than instances can carry")


def _draw(rng: np.random.Generator) -> Structure:
    kinds = [
        str(k) for k in rng.choice(OBJECTS, size=1 if rng.random() < 0.6 else 2, replace=False)
    ]
    instances = []
    for k in kinds:
        for _ in range(1 if rng.random() < 0.65 else 2):
            motion = None if rng.random() < P_STATIC else str(rng.choice(MOTIONS))
            instances.append((k, motion))
    if all(m is None for _, m in instances):
        i = int(rng.integers(len(instances)))
        instances[i] = (instances[i][0], str(rng.choice(MOTIONS)))
    r = rng.random()
    camera = None if r < 0.5 else ("shake" if r < 0.75 else "cut")
    scenes = [str(s) for s in rng.choice(SCENES, size=2 if camera == "cut" else 1, replace=False)]
    return Structure(tuple(instances), tuple(scenes), camera)


def _forced(rng: np.random.Generator, tags: set[str]) -> Structure:
    """A structure whose tag set is exactly `tags`; instance counts and the assignment of
    motions to instances are drawn."""
    check_tags(tags)
    kinds = [t for t in OBJECTS if t in tags]
    motions = [t for t in MOTIONS if t in tags]
    counts = [int(rng.integers(1, MAX_PER_KIND + 1)) for _ in kinds]
    i = 0
    while sum(counts) < len(motions):
        counts[i % len(counts)] = MAX_PER_KIND
        i += 1
    shapes = [k for k, c in zip(kinds, counts, strict=True) for _ in range(c)]
    order = rng.permutation(len(shapes))
    assigned: list[str | None] = [None] * len(shapes)
    for m, slot in zip(motions, order, strict=False):
        assigned[slot] = m
    for slot in order[len(motions) :]:
        assigned[slot] = None if rng.random() < P_STATIC else str(rng.choice(motions))
    camera = next((t for t in CAMERAS if t in tags), None)
    scenes = tuple(t for t in SCENES if t in tags)
    return Structure(tuple(zip(shapes, assigned, strict=True)), scenes, camera)


def sample_structure(rng: np.random.Generator, forced: set[str] | None = None) -> Structure:
    """Draw until the tag set is valid; with `forced`, build exactly that tag set."""
    if forced is not None:
        return _forced(rng, forced)
    while True:
        st = _draw(rng)
        try:
            check_tags(st.tags)
        except ValueError:
            continue
        return st
