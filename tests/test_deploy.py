"""Deployment files that need no external tool: the dependency locks, the Dockerfiles, and the
Grafana dashboard against the metrics a running server really exports. (The validators and a
real Prometheus are in tests/integration, `make test-integration`.)"""

from __future__ import annotations

import json
import re
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from vidtag.server.app import VidtagServer
from vidtag.server.background import running_server
from vidtag.server.config import ServeConfig
from vidtag.server.layers import ENV_PREFIX, FIELDS, build
from vidtag.server.metrics import STAGES

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "vidtag.json"
# Labels Prometheus adds at scrape time, and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job", "le"}


def read_lock(path: Path) -> dict[str, str]:
    """{canonical name: pinned version} of a pip requirements lock; every entry must be `==`."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line or line[0] in " #-":
            continue  # comments, hash continuation lines, options
        req = Requirement(line.rstrip(" \\"))
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: not pinned: {line}"
        pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def _project() -> dict[str, Any]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"])


# ---------------------------------------------------------------- locks


def test_serve_lock_pins_every_runtime_dependency() -> None:
    lock = ROOT / "requirements" / "serve.lock"
    pins = read_lock(lock)
    head = lock.read_text().splitlines()[:2]
    assert "uv pip compile pyproject.toml" in head[1], "the regeneration command heads the lock"
    for spec in _project()["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not in serve.lock"
        assert req.specifier.contains(pins[name]), f"serve.lock {name}=={pins[name]} vs {spec}"
    # Serving runs on ONNX Runtime: the CPU image must not carry PyTorch or CUDA.
    assert not {n for n in pins if n == "torch" or n.startswith("nvidia-")}
    assert all("--hash=sha256:" in block for block in lock.read_text().split("==")[1:])


def test_gpu_lock_adds_the_nvdec_extra_on_the_same_versions() -> None:
    serve = read_lock(ROOT / "requirements" / "serve.lock")
    gpu = read_lock(ROOT / "requirements" / "gpu.lock")
    extra = [Requirement(s) for s in _project()["optional-dependencies"]["nvdec"]]
    for req in extra:
        name = canonicalize_name(req.name)
        assert name in gpu and req.specifier.contains(gpu[name]), f"gpu.lock lacks {req}"
    shared = {n for n in serve if n in gpu}
    assert {n: gpu[n] for n in shared} == {n: serve[n] for n in shared}
    assert not set(serve) - set(gpu), f"gpu.lock misses {set(serve) - set(gpu)}"


# ---------------------------------------------------------------- Dockerfiles


def _stages(dockerfile: Path) -> dict[str, list[str]]:
    """Instruction lines (continuations joined) of each named build stage."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if m:
            current = stages.setdefault(m.group(1), [line])
        elif current is not None:
            current.append(line)
    return stages


def _image_env(stage: list[str]) -> dict[str, str]:
    """The variables a stage's `ENV K=V ...` lines set (values without spaces)."""
    env: dict[str, str] = {}
    for line in stage:
        if line.startswith("ENV "):
            for item in line.split()[1:]:
                key, sep, value = item.partition("=")
                assert sep, f"ENV item without '=': {item!r} in {line!r}"
                env[key] = value
    return env


@pytest.mark.parametrize(
    ("name", "base", "lock"),
    [
        ("Dockerfile", "python:3.11-slim", "requirements/serve.lock"),
        ("Dockerfile.gpu", "nvidia/cuda:", "requirements/gpu.lock"),
    ],
)
def test_dockerfile(name: str, base: str, lock: str) -> None:
    path = ROOT / name
    stages = _stages(path)
    assert set(stages) == {"builder", "runtime"}
    arg = re.search(r"^ARG \w+=(\S+)", path.read_text(), re.MULTILINE)
    assert arg is not None and arg.group(1).startswith(base)
    builder, runtime = " ".join(stages["builder"]), " ".join(stages["runtime"])
    # Dependencies from the lock (hash-checked), then the package alone; stubs generated here.
    assert f"pip install --require-hashes -r {lock}" in builder
    assert "pip install --no-deps" in builder and "grpc_tools.protoc" in builder
    assert "pip uninstall -y grpcio-tools" in builder
    assert (ROOT / lock).is_file()
    assert "grpc_tools" not in runtime and "pip install" not in runtime
    assert "COPY --from=builder /opt/vidtag /opt/vidtag" in runtime
    user = next(line.split()[1] for line in stages["runtime"] if line.startswith("USER "))
    assert not user.startswith(("0", "root"))
    assert "EXPOSE 50051 9464" in stages["runtime"]
    defaults = ServeConfig()
    assert (defaults.port, defaults.metrics_port) == (50051, 9464)
    health = next(line for line in stages["runtime"] if line.startswith("HEALTHCHECK"))
    assert '"vidtag", "health"' in health
    assert 'ENTRYPOINT ["vidtag", "serve"]' in stages["runtime"]
    # The settings the image serves with: its VIDTAG_* variables, read as `vidtag serve` reads
    # them (layers.py; VIDTAG_MODELS is the repository's own variable), with no flag after them.
    env = _image_env(stages["runtime"])
    settings = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert {k[len(ENV_PREFIX) :].lower() for k in settings} - {"models"} <= FIELDS  # no typo
    config = build({}, settings)
    launch = [line for line in stages["runtime"] if line.startswith(("ENTRYPOINT", "CMD"))]
    assert not any("--" in line for line in launch), launch  # nothing overrides the variables
    assert (config.port, config.metrics_port) == (50051, 9464)
    if name == "Dockerfile.gpu":
        assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in runtime
        # Serves on the GPU by default: torch runtime, NVDEC when PyNvVideoCodec imports.
        assert env["VIDTAG_DEVICE"] == "cuda"
        assert (config.device, config.resolved_runtime) == ("cuda", "torch")
        assert config.decode_backend == "auto"
    else:
        assert "VIDTAG_DEVICE" not in env and config.device == "cpu"
        assert config.resolved_runtime == "onnx"


def test_dockerignore_keeps_only_what_the_images_copy() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert lines[lines.index("*")] == "*"
    copied = set()
    for name in ("Dockerfile", "Dockerfile.gpu"):
        for line in (ROOT / name).read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                copied.add(line.split()[1].split("/")[0])
    assert copied <= allowed, copied - allowed
    assert "src/vidtag/v1/*_pb2*.py" in lines  # stubs are generated in the image


# ---------------------------------------------------------------- Grafana dashboard


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def exported_series(metrics_text: str) -> tuple[set[str], dict[str, set[str]]]:
    """(every series name the exposition can carry, label names seen per series name).

    Families without samples yet (a labelled counter never incremented) still declare their
    type, so their series names are derived from it."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gauge": ("",),
        "summary": ("", "_count", "_sum", "_created"),
    }
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


@pytest.fixture(scope="module")
def metrics_text(h264_clip: Path) -> Iterator[str]:
    """/metrics of a server on the bundled models after one tagged clip."""
    from vidtag.client.grpc_client import VidtagClient

    config = ServeConfig(
        host="127.0.0.1",
        port=0,
        model_repository=ROOT / "models",
        metrics_port=0,
        metrics_host="127.0.0.1",
        decode_processes=False,
        repository_poll_s=0,
    )
    server: VidtagServer
    with running_server(config) as (server, _):
        with VidtagClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            client.tag(h264_clip)
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            yield response.read().decode()


def test_dashboard_queries_use_exported_metrics(metrics_text: str) -> None:
    names, labels = exported_series(metrics_text)
    queries = dashboard_queries()
    assert len(queries) >= 10
    used: set[str] = set()
    for title, expr in queries:
        series = set(re.findall(r"\b(vidtag_\w+)", expr))
        assert series, f"{title!r}: no vidtag metric in {expr}"
        used |= series
        for metric in series:
            assert metric in names, f"{title!r}: {metric} is not exported (metrics.py)"
        # Labels the query groups by or matches on must exist on its series (known for series
        # with samples: a labelled counter never incremented shows none).
        wanted = {x.strip() for g in re.findall(r"\bby \(([^)]*)\)", expr) for x in g.split(",")}
        for matchers in re.findall(r"\{([^}]*)\}", expr):
            wanted |= set(re.findall(r"(\w+)\s*(?:=|!=|=~|!~)\s*\"", matchers))
        if all(metric in labels for metric in series):
            have = set().union(*(labels[m] for m in series)) | SCRAPE_LABELS
            assert wanted <= have, f"{title!r}: no label {wanted - have} on {series}"
    # Every family metrics.py exports is on the dashboard.
    families = {f.name for f in text_string_to_metric_families(metrics_text)}
    families = {f for f in families if not f.endswith("_created")}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", m) for m in used}
    assert families <= shown, f"not on the dashboard: {families - shown}"


def test_dashboard_layout_and_quantiles() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    queries = "\n".join(expr for _, expr in dashboard_queries())
    for stage in STAGES:
        for q in ("0.5", "0.9", "0.99"):
            series = f'vidtag_stage_seconds_bucket{{instance=~"$instance", stage="{stage}"}}'
            needle = f"histogram_quantile({q}, sum by (le) (rate({series}"
            assert needle in queries, f"no p{q} for stage {stage}"
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "instance"]


# ---------------------------------------------------------------- README references


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_readme_configuration_reference_is_complete() -> None:
    """Every ServeConfig field, its environment variable and every `vidtag serve` flag."""
    import argparse
    import dataclasses

    from vidtag.server.cli import add_serve_arguments
    from vidtag.server.layers import ENV_PREFIX

    section = _readme_section("Configuration reference")
    for field in dataclasses.fields(ServeConfig):
        assert f"`{field.name}`" in section, f"README lacks setting {field.name}"
        assert f"`{ENV_PREFIX}{field.name.upper()}" in section, (
            f"README lacks {field.name}'s variable"
        )
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    flags = {f for a in parser._actions for f in a.option_strings if f.startswith("--")}
    for flag in flags - {"--help"}:
        assert f"`{flag}" in section, f"README lacks {flag}"


def test_readme_metrics_reference_is_complete(metrics_text: str) -> None:
    section = _readme_section("Metrics reference")
    families = {f.name for f in text_string_to_metric_families(metrics_text)}
    for family in families - {f for f in families if f.endswith("_created")}:
        kind = next(
            f.type for f in text_string_to_metric_families(metrics_text) if f.name == family
        )
        name = family + ("_total" if kind == "counter" else "")
        assert f"`{name}`" in section, f"README lacks metric {name}"
