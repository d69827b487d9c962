"""The STB-1 tag vocabulary (../shared/SYNTH_SPEC.md): order is the label index."""

from __future__ import annotations

TAG_GROUPS: dict[str, tuple[str, ...]] = {
    "object": ("circle", "square", "triangle", "star", "ring", "cross"),
    "scene": ("plain", "gradient", "stripes", "checker", "noise", "grid"),
    "motion": (
        "move_left",
        "move_right",
        "move_up",
        "move_down",
        "rotate",
        "zoom_in",
        "zoom_out",
        "blink",
    ),
    "camera": ("shake", "cut"),
}

TAGS: tuple[str, ...] = tuple(t for group in TAG_GROUPS.values() for t in group)
TAG_INDEX: dict[str, int] = {t: i for i, t in enumerate(TAGS)}
GROUP_OF: dict[str, str] = {t: g for g, ts in TAG_GROUPS.items() for t in ts}
