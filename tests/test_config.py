"""ServeConfig layers: defaults < config file < environment < flags; every knob has a flag."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from vidtag.server.cli import _FLAG_FIELDS, add_serve_arguments, config_from_args
from vidtag.server.config import MiB, ServeConfig


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_without_any_layer() -> None:
    assert config_from_args(_args(), env={}) == ServeConfig()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "vidtag.toml"
    cfg_file.write_text('[serve]\nport = 6000\nworkers = 3\ngrace_s = 2.5\nmodel_name = "a"\n')
    env = {"VIDTAG_PORT": "7000", "VIDTAG_INFERENCE_THREADS": "2", "VIDTAG_OTHER": "ignored"}
    cfg = config_from_args(_args("--config", str(cfg_file), "--workers", "5"), env=env)
    assert cfg.port == 7000  # env over file
    assert cfg.workers == 5  # flag over file
    assert cfg.grace_s == 2.5 and cfg.model_name == "a"  # file over defaults
    assert cfg.inference_threads == 2


def test_flag_units_and_none(tmp_path: Path) -> None:
    cfg_file = tmp_path / "vidtag.json"
    cfg_file.write_text(json.dumps({"metrics_port": 9999, "max_stream_bytes": 5 * MiB}))
    cfg = config_from_args(
        _args(
            "--config", str(cfg_file), "--max-receive-mb", "8", "--metrics-port", "-1",
            "--upload-spool-mb", "0.5",
        ),
        env={"VIDTAG_MAX_CONCURRENT_RPCS": "none"},
    )  # fmt: skip
    assert cfg.max_receive_bytes == 8 * MiB and cfg.max_stream_bytes == 5 * MiB
    assert cfg.upload_spool_bytes == MiB // 2
    assert cfg.metrics_port is None and cfg.max_concurrent_rpcs is None


@pytest.mark.parametrize(
    ("env", "file", "match"),
    [
        ({"VIDTAG_PORT": "eighty"}, None, r"\$VIDTAG_PORT: port='eighty' is not a valid int"),
        ({}, '{"no_such_knob": 1}', "unknown setting 'no_such_knob'"),
        ({"VIDTAG_WORKERS": "0"}, None, "workers must be >= 1"),
        ({"VIDTAG_GRACE_S": "none"}, None, "grace_s='none' is not a valid float"),
    ],
)
def test_bad_values_name_their_origin(
    tmp_path: Path, env: dict[str, str], file: str | None, match: str
) -> None:
    argv: list[str] = []
    if file is not None:
        (tmp_path / "c.json").write_text(file)
        argv = ["--config", str(tmp_path / "c.json")]
    with pytest.raises(ValueError, match=match):
        config_from_args(_args(*argv), env=env)


def test_every_knob_has_a_documented_flag() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    assert {name for name, _ in _FLAG_FIELDS.values()} == fields
    helps = {a.dest: a.help or "" for a in parser._actions}
    for dest in _FLAG_FIELDS:
        assert "default" in helps[dest], dest


def test_decode_threads_default_to_twice_the_cores_up_to_eight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for cores, want in ((2, 4), (3, 6), (16, 8), (None, 2)):
        monkeypatch.setattr("os.cpu_count", lambda c=cores: c)
        assert ServeConfig().resolved_decode_threads == want
    assert ServeConfig(decode_threads=3).resolved_decode_threads == 3
    with pytest.raises(ValueError, match="decode_threads"):
        ServeConfig(decode_threads=0)


def test_decode_budget_reaches_the_sampling_spec() -> None:
    assert "budget_ms" not in ServeConfig().sampling_overrides  # the model's own
    cfg = config_from_args(_args("--decode-budget-ms", "250"), env={})
    assert cfg.sampling_overrides == {"threads": cfg.resolved_decode_threads, "budget_ms": 250.0}
    with pytest.raises(ValueError, match="decode_budget_ms"):
        ServeConfig(decode_budget_ms=-1.0)
    cfg = config_from_args(_args("--decode-tradeoff", "0.03"), env={"VIDTAG_DECODE_BUDGET": "96"})
    assert cfg.sampling_overrides == {
        "threads": cfg.resolved_decode_threads,
        "tradeoff": 0.03,
        "budget": 96.0,
    }
    with pytest.raises(ValueError, match="decode_tradeoff"):
        ServeConfig(decode_tradeoff=-0.1)


def test_device_defaults_pick_the_runtime_and_precision() -> None:
    cpu = ServeConfig()
    assert (cpu.device, cpu.resolved_runtime, cpu.resolved_precision) == ("cpu", "onnx", "fp32")
    cuda = ServeConfig(device="cuda:1")
    assert (cuda.resolved_runtime, cuda.resolved_precision) == ("torch", "fp16")
    opts = ServeConfig(device="cpu", runtime="torch", precision="bf16", max_batch_size=4)
    assert opts.runtime_options().resolved_precision == "bf16"
    assert opts.runtime_options().max_batch_size == 4
    flags = _args(
        "--device", "cuda", "--precision", "bf16", "--no-cuda-graphs",
        "--decode-backend", "hybrid", "--nvdec-workers", "6",
    )  # fmt: skip
    cfg = config_from_args(flags, env={})
    assert (cfg.device, cfg.precision, cfg.cuda_graphs) == ("cuda", "bf16", False)
    assert (cfg.decode_backend, cfg.nvdec_workers) == ("hybrid", 6)
    env = {"VIDTAG_DEVICE": "cuda:0", "VIDTAG_CUDA_GRAPHS": "false", "VIDTAG_RUNTIME": "none"}
    cfg = config_from_args(_args(), env=env)
    assert (cfg.device, cfg.cuda_graphs, cfg.runtime) == ("cuda:0", False, None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "gpu"}, "device must be 'cpu', 'cuda' or 'cuda:N'"),
        ({"device": "cuda:x"}, "device must be"),
        ({"device": "cuda", "runtime": "onnx"}, "runtime 'onnx' runs on the CPU only"),
        ({"runtime": "tensorrt"}, "runtime must be one of"),
        ({"runtime": "torch", "precision": "fp16"}, "'fp16' needs a CUDA device"),
        ({"runtime": "onnx", "precision": "bf16"}, "'onnx' runs fp32 only"),
        ({"device": "cuda", "precision": "int8"}, "precision must be one of"),
        ({"decode_backend": "nvdec"}, "needs device 'cuda' or 'cuda:N'"),
        ({"decode_backend": "hybrid"}, "needs device 'cuda' or 'cuda:N'"),
        ({"decode_backend": "ffmpeg"}, "decode_backend must be one of"),
        ({"device": "cuda", "nvdec_workers": 0}, "nvdec_workers must be >= 1"),
    ],
)
def test_device_settings_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ServeConfig(**kwargs)  # type: ignore[arg-type]


def test_serve_on_cuda_without_cuda_fails_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """`vidtag serve --device cuda` where torch sees no GPU (or there is no torch) exits 2
    at start with one error line that says so, before binding or loading anything."""
    from vidtag.cli import main

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with caplog.at_level("ERROR"):
        code = main(["serve", "--device", "cuda", "--port", "0", "--metrics-port", "-1"])
    assert code == 2
    (record,) = caplog.records
    line = record.getMessage()
    assert "cannot serve on --device cuda" in line and "sees no CUDA device" in line
    assert "\n" not in line
