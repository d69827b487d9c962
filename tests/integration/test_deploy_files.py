"""The shipped deployment files through schema-aware tools, and against the server they deploy:
promtool on the Prometheus config, kubernetes-validate (Kubernetes OpenAPI schemas, strict) on
deploy/k8s, check-jsonschema with the compose-spec schema it vendors on docker-compose.yml.
Each tool is also shown a broken copy, to prove it catches what it should."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from integration_tools import ROOT, find_tool, run_tool, yaml_module

from vidtag.server.config import ServeConfig
from vidtag.server.layers import ENV_PREFIX, FIELDS, build

pytestmark = pytest.mark.integration

K8S = ROOT / "deploy" / "k8s"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"
DEFAULTS = ServeConfig()


def _load(path: Path) -> Any:
    return yaml_module().safe_load(path.read_text())


def _manifests() -> list[Path]:
    """Kubernetes resources (kustomization.yaml is kustomize's, not a cluster object)."""
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


# ---------------------------------------------------------------- promtool


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    promtool = find_tool("promtool")
    done = run_tool([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_CONFIG.read_text().replace("type: A", "type: CNAME"))
    done = run_tool([promtool, "check", "config", str(broken)])
    assert done.returncode != 0, "promtool accepted an invalid DNS record type"


def test_prometheus_config_scrapes_the_metrics_port() -> None:
    config = _load(PROMETHEUS_CONFIG)
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "vidtag")
    assert job["metrics_path"] == "/metrics"
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["vidtag"] and sd["port"] == DEFAULTS.metrics_port == 9464


# ---------------------------------------------------------------- Kubernetes


def test_kubernetes_validate_accepts_every_manifest() -> None:
    validate = find_tool("kubernetes-validate")
    manifests = _manifests()
    assert {p.name for p in manifests} == {
        "deployment.yaml",
        "deployment-gpu.yaml",
        "service-headless.yaml",
        "hpa.yaml",
        "pdb.yaml",
    }
    done = run_tool([validate, "--strict", *map(str, manifests)])
    assert done.returncode == 0, done.stdout + done.stderr
    for path in manifests:
        assert f"{path} passed" in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("  replicas: 2", "  replica: 2"),  # unknown field (strict)
        ("              port: 50051\n", "              port: grpc\n"),  # grpc probes take a number
        ("averageUtilization: 70", 'averageUtilization: "70%"'),  # an integer
    ],
)
def test_kubernetes_validate_rejects_broken_manifests(tmp_path: Path, old: str, new: str) -> None:
    validate = find_tool("kubernetes-validate")
    source = K8S / ("hpa.yaml" if "averageUtilization" in old else "deployment.yaml")
    text = source.read_text()
    assert old in text
    broken = tmp_path / source.name
    broken.write_text(text.replace(old, new, 1))
    done = run_tool([validate, "--strict", str(broken)])
    assert done.returncode != 0, f"kubernetes-validate accepted {new!r}"


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-gpu.yaml"])
def test_deployment_matches_the_server(name: str) -> None:
    deployment = _load(K8S / name)
    spec, pod = deployment["spec"], deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    container = _container(deployment)
    env = _env(container)
    # Every VIDTAG_* variable is a setting `vidtag serve` reads (layers.py) and accepts.
    settings = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert set(env) - set(settings) <= {"NVIDIA_DRIVER_CAPABILITIES"}
    assert {k[len(ENV_PREFIX) :].lower() for k in settings} <= FIELDS  # no ignored typo
    config = build({}, settings)
    assert config.inference_threads == int(env["VIDTAG_INFERENCE_THREADS"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(env["VIDTAG_PORT"]), "metrics": int(env["VIDTAG_METRICS_PORT"])}
    assert ports == {"grpc": DEFAULTS.port, "metrics": DEFAULTS.metrics_port}
    # Native gRPC health probes on the serving port; readiness asks for the tagging service.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    assert container["readinessProbe"]["grpc"]["service"] == "vidtag.v1.VideoTagger"
    # Shutdown fits: preStop sleep + the server's drain (--grace-s) + time to exit.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace_s = float(env["VIDTAG_GRACE_S"])
    assert grace_s == DEFAULTS.grace_s
    assert pod["spec"]["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + grace_s + 5
    # Scrape annotations name the metrics port.
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    # Non-root, as the image's USER.
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    dockerfile = (ROOT / ("Dockerfile.gpu" if "gpu" in name else "Dockerfile")).read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    # ONNX Runtime's threads sized to the pod's CPUs, not the node's.
    assert env["VIDTAG_INFERENCE_THREADS"] == str(resources["limits"]["cpu"])
    if "gpu" in name:
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {t["key"] for t in pod["spec"]["tolerations"]} == {"nvidia.com/gpu"}
        assert "video" in env["NVIDIA_DRIVER_CAPABILITIES"]
    else:
        assert "nvidia.com/gpu" not in resources["limits"]


def test_service_hpa_pdb_select_the_deployments() -> None:
    service = _load(K8S / "service-headless.yaml")
    assert service["spec"]["clusterIP"] == "None"  # headless: DNS answers every pod's IP
    assert "ClusterIP Service balances connections, not calls" in (
        (K8S / "service-headless.yaml").read_text()
    )
    cpu, gpu = _load(K8S / "deployment.yaml"), _load(K8S / "deployment-gpu.yaml")
    for deployment in (cpu, gpu):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        pdb = _load(K8S / "pdb.yaml")
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["port"] == DEFAULTS.port and ports["grpc"]["targetPort"] == "grpc"
    hpa = _load(K8S / "hpa.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", cpu["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB's maxUnavailable 1, one keeps serving
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_kustomization_lists_the_cpu_resources() -> None:
    kustomization = _load(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    assert all((K8S / r).is_file() for r in resources)
    assert set(resources) == {p.name for p in _manifests()} - {"deployment-gpu.yaml"}
    [image] = kustomization["images"]
    assert image["name"] == _container(_load(K8S / "deployment.yaml"))["image"].split(":")[0]


# ---------------------------------------------------------------- docker compose


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    check = find_tool("check-jsonschema")
    argv = [check, "--builtin-schema", "vendor.compose-spec"]
    done = run_tool([*argv, str(COMPOSE)])
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periods:"))
    done = run_tool([*argv, str(broken)])
    assert done.returncode != 0, "check-jsonschema accepted an unknown service key"


def test_compose_wiring() -> None:
    compose = _load(COMPOSE)
    services = compose["services"]
    assert set(services) == {"vidtag", "prometheus", "grafana"}
    vidtag = services["vidtag"]
    settings = vidtag["environment"]  # VIDTAG_* settings `vidtag serve` knows and accepts
    assert {k[len(ENV_PREFIX) :].lower() for k in settings if k.startswith(ENV_PREFIX)} <= FIELDS
    assert all(k.startswith(ENV_PREFIX) for k in settings)
    config = build({}, settings)
    assert config.workers == int(vidtag["environment"]["VIDTAG_WORKERS"])
    assert vidtag["healthcheck"]["test"][:3] == ["CMD", "vidtag", "health"]
    stop_s = float(vidtag["stop_grace_period"].rstrip("s"))
    assert stop_s > float(vidtag["environment"]["VIDTAG_GRACE_S"])
    assert str(DEFAULTS.metrics_port) in vidtag["expose"]
    # Every file the services mount is in the repository.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    # Grafana: the datasource uid the dashboard's datasource variable resolves to, and the
    # folder the dashboard provider reads.
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    [datasource] = _load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    [provider] = _load(provisioning / "dashboards" / "vidtag.yml")["providers"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert (ROOT / "deploy" / "grafana" / "dashboards" / "vidtag.json").is_file()
