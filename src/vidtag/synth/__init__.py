"""STB-1 synthetic tagging benchmark generator (../shared/SYNTH_SPEC.md).

`generate(out_dir, count, split, seed)` writes labelled clips plus `manifest.jsonl`. Modules:
`structure` (tag sets), `sampling` (every random draw -> `spec.ClipSpec`), `scenes` and `shapes`
(geometry), `render` (frames), `encode` (containers; see its docstring for reading rotation back),
`generate` (process pool, manifest).
"""

from __future__ import annotations

from vidtag.synth.generate import MANIFEST, clip_spec, generate

__all__ = ["MANIFEST", "clip_spec", "generate"]
