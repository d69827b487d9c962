"""Evaluate an artifact end to end (decoder -> ONNX Runtime -> thresholds) on a manifest."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vidtag.errors import BackendUnavailable
from vidtag.runtime.tagger import Tagger
from vidtag.train.manifest import multi_hot, read_manifest
from vidtag.train.metrics import evaluate_predictions, jaccard, per_tag


def evaluate_artifact(
    model_dir: str | Path,
    manifest: str | Path,
    *,
    policy: str | None = None,
    fill: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    decode_backend: str = "pyav",
) -> dict[str, Any]:
    """All SYNTH_SPEC metrics plus mean Jaccard broken down by codec, GOP and size, decoding
    with `decode_backend` (e.g. `nvdec` to measure the GPU path's frames)."""
    overrides = {"policy": policy, "fill": fill}
    tagger = Tagger(
        model_dir,
        sampling={k: v for k, v in overrides.items() if v is not None},
        decode_backend=decode_backend,
    )
    clips = read_manifest(manifest)[:limit]
    rows = [json.loads(x) for x in Path(manifest).read_text().splitlines() if x.strip()][:limit]
    meta = tagger.meta
    truth = multi_hot(clips, meta.tags).astype(bool)
    scores = np.zeros(truth.shape, dtype=np.float32)
    pred = np.zeros(truth.shape, dtype=bool)
    decode_ms, failed = [], []
    index = {t: i for i, t in enumerate(meta.tags)}
    for r, clip in enumerate(tqdm(clips, desc="eval", disable=not progress)):
        try:
            res = tagger.tag(clip.path)
        except BackendUnavailable:  # this machine cannot decode so: no clip would
            raise
        except Exception as exc:  # counted as an empty prediction, listed in the report
            failed.append(f"{clip.path}: {exc}")
            continue
        for t in res.tags:
            pred[r, index[t.name]] = True
        scores[r] = res.all_scores
        decode_ms.append(res.timings["decode"] * 1000)
    metrics: dict[str, Any] = evaluate_predictions(scores, pred, truth, meta.tags, meta.groups)
    metrics["per_tag"] = per_tag(scores, pred, truth, meta.tags)
    per = jaccard(pred, truth)
    breakdown: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for j, row in zip(per, rows, strict=True):
        for key in ("codec", "gop", "fps"):
            if key in row:
                breakdown[key][str(row[key])].append(float(j))
        if "width" in row:
            breakdown["size"][f"{row['width']}x{row['height']}"].append(float(j))
    metrics["by"] = {
        k: {v: round(float(np.mean(js)), 4) for v, js in sorted(d.items())}
        for k, d in breakdown.items()
    }
    metrics["decode_ms_median"] = float(np.median(decode_ms)) if decode_ms else None
    metrics["failed"] = failed
    metrics["model"] = f"{meta.name}/{meta.version}"
    metrics["policy"] = tagger.spec.policy
    metrics["fill"] = tagger.spec.fill
    metrics["decode_backend"] = decode_backend
    return metrics


def format_metrics(m: dict[str, Any]) -> str:
    lines = [
        f"model {m['model']}  policy {m['policy']} (fill {m['fill']}, "
        f"{m.get('decode_backend', 'pyav')} decoding)  clips {int(m['clips'])}"
    ]
    for k in ("mean_jaccard", "mAP", "micro_f1", "macro_f1", "hit_at_1", "exact_match"):
        lines.append(f"  {k:<14} {m[k]:.4f}")
    for k in sorted(x for x in m if x.startswith("acc_")):
        lines.append(f"  {k:<14} {m[k]:.4f}")
    for key, d in m.get("by", {}).items():
        lines.append(f"  jaccard by {key}: " + ", ".join(f"{v}={j:.3f}" for v, j in d.items()))
    if m.get("per_tag"):
        lines.append("  per tag (AP / F1 / support):")
        lines += [
            f"    {t:<11} {v['ap']:.3f} / {v['f1']:.3f} / {int(v['support'])}"
            for t, v in m["per_tag"].items()
        ]
    if m.get("decode_ms_median") is not None:
        lines.append(f"  decode median  {m['decode_ms_median']:.1f} ms")
    if m["failed"]:
        lines.append(f"  failed clips   {len(m['failed'])}: {m['failed'][:3]}")
    return "\n".join(lines)
