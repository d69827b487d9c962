"""Client-side load balancing (`dns:///` and `ipv4:` targets, round_robin) and `vidtag health`."""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vidtag.cli import build_parser
from vidtag.client.cli import (
    LB_CHOICES,
    add_health_arguments,
    add_tag_arguments,
    default_health_target,
    run_health,
    run_tag,
)
from vidtag.client.grpc_client import (
    LB_POLICIES,
    VidtagClient,
    default_load_balancing,
    service_config,
)
from vidtag.server.app import VidtagServer
from vidtag.server.background import running_server
from vidtag.server.config import ServeConfig

MODEL_NAME = "tiny"


def _config(repo: Path) -> ServeConfig:
    return ServeConfig(
        host="127.0.0.1",
        port=0,
        model_repository=repo,
        model_name=MODEL_NAME,
        workers=1,
        decode_processes=False,
        metrics_port=None,
        repository_poll_s=0,
    )


@pytest.fixture(scope="module")
def two_servers(model_repo: Path) -> Iterator[tuple[VidtagServer, VidtagServer]]:
    """Two SERVING servers on two ports of 127.0.0.1 (two replicas behind one name)."""
    with (
        running_server(_config(model_repo)) as (a, _),
        running_server(_config(model_repo)) as (
            b,
            _,
        ),
    ):
        yield a, b


def _list_models_calls(server: VidtagServer) -> int:
    value = server.metrics.registry.get_sample_value(
        "vidtag_requests_total", {"method": "ListModels", "status": "OK"}
    )
    return int(value or 0)


def _spread(
    servers: tuple[VidtagServer, VidtagServer], client: VidtagClient, calls: int
) -> list[int]:
    """ListModels calls each server answered out of `calls` made through `client`."""
    before = [_list_models_calls(s) for s in servers]
    for _ in range(calls):
        assert client.list_models().default_model_name == MODEL_NAME
    return [_list_models_calls(s) - b for s, b in zip(servers, before, strict=True)]


def test_round_robin_spreads_calls_over_every_address(
    two_servers: tuple[VidtagServer, VidtagServer],
) -> None:
    a, b = two_servers
    target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
    assert default_load_balancing(target) == "round_robin"
    with VidtagClient(target, timeout=10) as client:
        # The channel is READY with the first connection; the second may take a moment.
        deadline = time.monotonic() + 10
        seen = [0, 0]
        while min(seen) == 0 and time.monotonic() < deadline:
            seen = [x + y for x, y in zip(seen, _spread(two_servers, client, 2), strict=True)]
        assert min(seen) > 0, f"one server never answered: {seen}"
        # Both connected: calls alternate between them.
        spread = _spread(two_servers, client, 20)
    assert sum(spread) == 20 and min(spread) >= 8, spread


def test_pick_first_sends_every_call_to_one_address(
    two_servers: tuple[VidtagServer, VidtagServer],
) -> None:
    a, b = two_servers
    target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
    with VidtagClient(target, timeout=10, load_balancing="pick_first") as client:
        assert client.health() == "SERVING"
        time.sleep(0.2)  # time enough for round_robin to connect both: pick_first does not
        spread = _spread(two_servers, client, 12)
    assert sorted(spread) == [0, 12], spread


def test_dns_target(two_servers: tuple[VidtagServer, VidtagServer], h264_clip: Path) -> None:
    """`dns:///localhost:P`: localhost may resolve to ::1 too, where nothing listens; round
    robin uses only the addresses that connect."""
    a, _ = two_servers
    with VidtagClient(f"dns:///localhost:{a.port}", timeout=30) as client:
        assert client.load_balancing == "round_robin"
        assert client.health() == "SERVING"
        result = client.tag(h264_clip, threshold=0.0)
    assert result.model_name == MODEL_NAME and len(result.tags) > 0


def test_cli_tag_over_dns_target(
    two_servers: tuple[VidtagServer, VidtagServer], h264_clip: Path
) -> None:
    a, b = two_servers
    for target in (f"dns:///localhost:{a.port}", f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"):
        parser = argparse.ArgumentParser()
        add_tag_arguments(parser)
        out, err = io.StringIO(), io.StringIO()
        args = parser.parse_args([str(h264_clip), "--server", target, "--json", "--top-k", "2"])
        assert run_tag(args, out=out, err=err) == 0, err.getvalue()
        assert json.loads(out.getvalue())["model_name"] == MODEL_NAME


def test_load_balancing_choice() -> None:
    assert LB_CHOICES == LB_POLICIES
    assert default_load_balancing("dns:///vidtag.default.svc.cluster.local:50051") == "round_robin"
    assert default_load_balancing("DNS:///h:1") == "round_robin"
    assert default_load_balancing("ipv6:[::1]:1,[::1]:2") == "round_robin"
    assert default_load_balancing("localhost:50051") is None
    assert default_load_balancing("unix:/tmp/s") is None
    assert json.loads(service_config("round_robin")) == {
        "loadBalancingConfig": [{"round_robin": {}}]
    }
    with pytest.raises(ValueError, match="unknown load-balancing policy"):
        service_config("random")
    with pytest.raises(ValueError, match="unknown load-balancing policy"):
        VidtagClient("dns:///localhost:1", load_balancing="least_request")
    with (
        VidtagClient("localhost:1") as bare,
        VidtagClient("h:1", load_balancing="round_robin") as rr,
    ):
        assert bare.load_balancing is None and rr.load_balancing == "round_robin"


# ---------------------------------------------------------------- `vidtag health`


def _health(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="vidtag health")
    add_health_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = run_health(parser.parse_args(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_health_command(two_servers: tuple[VidtagServer, VidtagServer], model_repo: Path) -> None:
    a, _ = two_servers
    code, out, err = _health(["--server", f"127.0.0.1:{a.port}"])
    assert (code, out, err) == (0, "SERVING\n", "")
    code, out, _ = _health(
        ["--server", f"127.0.0.1:{a.port}", "--service", "vidtag.v1.VideoTagger"]
    )
    assert (code, out) == (0, "SERVING\n")
    # Started but no model loaded yet: NOT_SERVING, exit 1 (a container is not healthy yet).
    with running_server(_config(model_repo), load=False) as (cold, _):
        code, out, _ = _health(["--server", f"127.0.0.1:{cold.port}"])
    assert (code, out) == (1, "NOT_SERVING\n")
    code, out, err = _health(["--server", "127.0.0.1:1", "--timeout", "2"])
    assert code == 1 and not out and "UNAVAILABLE" in err


def test_health_default_target_and_registration() -> None:
    assert default_health_target({}) == "127.0.0.1:50051"
    assert default_health_target({"VIDTAG_PORT": "6000"}) == "127.0.0.1:6000"
    args = build_parser().parse_args(["health", "--timeout", "1"])
    assert args.command == "health" and args.server is None and args.timeout == 1.0
