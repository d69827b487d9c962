"""The model artifact: `models/<name>/<version>/{model.onnx, model.json}`, the only contract
between training and serving. The server has no model constants of its own."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vidtag.decode.spec import SamplingSpec
from vidtag.errors import ModelError
from vidtag.runtime.decision import DecisionRule

FORMAT = "vidtag-artifact/1"
METADATA_FILE = "model.json"


@dataclass(frozen=True)
class InputSpec:
    frames: int
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCTHW"
    color: str = "RGB"


@dataclass(frozen=True)
class ArtifactMeta:
    name: str
    version: str
    network_file: str
    arch: str
    input: InputSpec
    sampling: dict[str, Any]  # SamplingSpec fields other than the frame count and size
    tags: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]
    thresholds: tuple[float, ...]
    embedding_size: int
    top_k: int = 0  # 0: no cap beyond thresholds
    min_tags: int = 1  # always return at least this many (the best-scoring) tags
    # Per tag group (min, max) tags a clip carries; see DecisionRule.
    group_limits: dict[str, tuple[int, int]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def decision_rule(self) -> DecisionRule:
        return DecisionRule(
            tags=self.tags,
            groups=self.groups,
            thresholds=self.thresholds,
            group_limits=self.group_limits,
            min_tags=self.min_tags,
            top_k=self.top_k,
        )

    def sampling_spec(self, **override: Any) -> SamplingSpec:
        kw = {**self.sampling, **override}
        return SamplingSpec(
            frames=self.input.frames, height=self.input.height, width=self.input.width, **kw
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / METADATA_FILE
        path.write_text(self.to_json() + "\n")
        return path


def load_meta(directory: str | Path) -> ArtifactMeta:
    """Read and validate `model.json`; raise ModelError naming what is wrong."""
    path = Path(directory) / METADATA_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"no {METADATA_FILE} in {directory}") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from exc
    if raw.get("format") != FORMAT:
        raise ModelError(f"{path}: unsupported artifact format {raw.get('format')!r}")
    try:
        raw["input"] = InputSpec(
            **{
                **raw["input"],
                "mean": tuple(raw["input"]["mean"]),
                "std": tuple(raw["input"]["std"]),
            }
        )
        raw["tags"] = tuple(raw["tags"])
        raw["groups"] = {k: tuple(v) for k, v in raw["groups"].items()}
        raw["thresholds"] = tuple(float(t) for t in raw["thresholds"])
        raw["group_limits"] = {
            g: (int(v[0]), int(v[1])) for g, v in raw.get("group_limits", {}).items()
        }
        meta = ArtifactMeta(**raw)
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{path}: malformed metadata: {exc}") from exc
    if len(meta.thresholds) != len(meta.tags):
        raise ModelError(f"{path}: {len(meta.thresholds)} thresholds for {len(meta.tags)} tags")
    if not (Path(directory) / meta.network_file).is_file():
        raise ModelError(f"{directory}: network file {meta.network_file} is missing")
    return meta
