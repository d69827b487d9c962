"""A real Prometheus server (Debian's `prometheus` package) scrapes a running vidtag with the
shipped scrape job; the request counter and the stage histogram come back through Prometheus's
HTTP API, and every query of the Grafana dashboard evaluates there."""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from integration_tools import ROOT, find_tool, free_port, yaml_module

from vidtag.client.grpc_client import VidtagClient
from vidtag.errors import InvalidVideo
from vidtag.server.app import VidtagServer

pytestmark = pytest.mark.integration

TAGGED = 4  # TagVideo requests that succeed
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "vidtag.json"


class Prometheus:
    """A Prometheus server started for the test; `query` is its instant-query HTTP API."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    def get(self, path: str, **params: str) -> Any:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of `promql` now (raises on a query Prometheus rejects)."""
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, promql: str) -> float | None:
        """The single value of a one-series query, None while it has no series."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait(self, what: str, ok: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{self.log.read_text()[-3000:]}")
            time.sleep(0.25)


def scrape_config(metrics_address: str) -> dict[str, Any]:
    """The shipped Prometheus config with its `vidtag` job pointed at `metrics_address` (the
    shipped job finds compose replicas through Docker's DNS) and a 1 s scrape interval."""
    shipped_file = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    shipped = yaml_module().safe_load(shipped_file.read_text())
    job = next(j for j in shipped["scrape_configs"] if j["job_name"] == "vidtag")
    job = {k: v for k, v in job.items() if not k.endswith("_sd_configs")}
    job.update(
        static_configs=[{"targets": [metrics_address]}], scrape_interval="1s", scrape_timeout="1s"
    )
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [job],
    }


@pytest.fixture(scope="module")
def prometheus(
    served: VidtagServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    exe = find_tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(yaml_module().safe_dump(scrape_config(f"127.0.0.1:{served.metrics_port}")))
    port = free_port()
    log = work / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={work / 'data'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        prom.wait("Prometheus to be ready", lambda: _ready(prom.url))
        # The first scrape precedes the test's requests, so rates see them as increases.
        prom.wait("the first scrape of vidtag", lambda: prom.value('up{job="vidtag"}') == 1.0)
        yield prom
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _local(served: VidtagServer, name: str, **labels: str) -> float:
    value = served.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


@pytest.fixture(scope="module")
def traffic(prometheus: Prometheus, served: VidtagServer, clip: Path) -> dict[str, float]:
    """TAGGED clips tagged and one bad video refused, after Prometheus's first scrape; then
    waits until Prometheus has scraped the final counts. Returns the server's own counts."""
    before = _local(served, "vidtag_requests_total", method="TagVideo", status="OK")
    with VidtagClient(f"127.0.0.1:{served.port}", timeout=30) as client:
        for _ in range(TAGGED):
            assert client.tag(clip).tags
        with pytest.raises(InvalidVideo):
            client.tag(b"not a video" * 100)

    def server_counts() -> dict[str, float]:
        return {
            "ok": _local(served, "vidtag_requests_total", method="TagVideo", status="OK"),
            "invalid": _local(
                served, "vidtag_requests_total", method="TagVideo", status="INVALID_ARGUMENT"
            ),
            "total_stage": _local(served, "vidtag_stage_seconds_count", stage="total"),
        }

    ok = 'vidtag_requests_total{method="TagVideo",status="OK"}'
    invalid = 'vidtag_requests_total{method="TagVideo",status="INVALID_ARGUMENT"}'
    stages = 'sum(vidtag_stage_seconds_count{stage="total"})'
    # Series born with these requests need a second sample before rate() sees them.
    samples = 'min(count_over_time(vidtag_requests_total{method="TagVideo"}[1m]))'

    def scraped() -> bool:
        # The server counts an aborted RPC just after the client sees its status: compare
        # with the server's counts as they are at each poll.
        now = server_counts()
        return (
            now["invalid"] >= 1
            and prometheus.value(ok) == now["ok"]
            and prometheus.value(invalid) == now["invalid"]
            and prometheus.value(stages) == now["total_stage"]
            and (prometheus.value(samples) or 0.0) >= 2
        )

    prometheus.wait("the requests in Prometheus", scraped)
    counts = server_counts()
    assert counts["ok"] - before == TAGGED
    return counts


def test_prometheus_scrapes_the_request_histogram(
    prometheus: Prometheus, served: VidtagServer, traffic: dict[str, float]
) -> None:
    targets = prometheus.get("/api/v1/targets")["activeTargets"]
    assert [(t["labels"]["job"], t["health"]) for t in targets] == [("vidtag", "up")]
    assert targets[0]["scrapeUrl"] == f"http://127.0.0.1:{served.metrics_port}/metrics"

    ok = prometheus.value('vidtag_requests_total{method="TagVideo",status="OK"}')
    assert ok == traffic["ok"] >= TAGGED
    refused = prometheus.value('vidtag_requests_total{status="INVALID_ARGUMENT"}')
    assert refused == traffic["invalid"] >= 1
    # Every stage's histogram counts each tagged clip, and its buckets are cumulative.
    for stage in ("decode", "queue", "inference", "total"):
        count = prometheus.value(f'vidtag_stage_seconds_count{{stage="{stage}"}}')
        assert count == traffic["total_stage"], stage
        inf = prometheus.value(f'vidtag_stage_seconds_bucket{{stage="{stage}",le="+Inf"}}')
        assert inf == count, stage
    total_s = prometheus.value('vidtag_stage_seconds_sum{stage="total"}')
    assert total_s is not None and 0.0 < total_s < 30.0 * traffic["total_stage"]
    # Quantiles from the buckets, as the dashboard computes them: the clips just tagged took
    # between 1 ms and the 10 s top bucket.
    buckets = 'vidtag_stage_seconds_bucket{stage="total"}'
    p50 = prometheus.value(f"histogram_quantile(0.5, sum by (le) (rate({buckets}[1m])))")
    assert p50 is not None and 0.001 <= p50 <= 10.0, p50
    batches = prometheus.value("sum(increase(vidtag_batch_size_count[1m]))")
    assert batches is not None and batches > 0


def test_dashboard_queries_evaluate(prometheus: Prometheus, traffic: dict[str, float]) -> None:
    """Every PromQL query of the Grafana dashboard, with its variables set as Grafana would
    (all replicas, a 1 m rate window), is accepted by Prometheus and, except load shedding
    (nothing was shed), has data."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    assert queries
    for title, expr in queries:
        promql = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        assert "$" not in promql, f"{title!r}: unknown variable in {expr}"
        result = prometheus.query(promql)
        if "vidtag_rejected_total" in expr:
            continue
        assert result, f"{title!r}: no data for {promql}"
        values = [float(r["value"][1]) for r in result]
        if "histogram_quantile" not in expr:  # a quantile of a histogram with no new data is NaN
            assert not any(math.isnan(v) for v in values), f"{title!r}: {promql} -> {values}"
    # The dashboard's replica selector lists the scraped server.
    instances = prometheus.get("/api/v1/label/instance/values", **{"match[]": "vidtag_model_info"})
    assert len(instances) == 1
