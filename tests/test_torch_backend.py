"""TorchBackend on the CPU: the OnnxBackend contract, bucket padding, precision, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from vidtag.errors import BackendUnavailable, ModelError
from vidtag.runtime.artifact import InputSpec
from vidtag.runtime.backends import RuntimeOptions, create_backend
from vidtag.runtime.onnx_backend import OnnxBackend
from vidtag.runtime.onnx_torch import load_onnx_module
from vidtag.runtime.preprocess import preprocess, preprocess_tensor
from vidtag.runtime.repository import default_repository
from vidtag.runtime.torch_backend import TorchBackend, buckets_up_to

STB1 = default_repository() / "stb1" / "2" / "model.onnx"
SHAPE = (3, 8, 160, 96)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def unpadded(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The graph run eagerly on exactly the 5 rows, no buckets, no padding."""
    with torch.inference_mode():
        logits, emb = load_onnx_module(STB1)(torch.from_numpy(batch))
    return logits.numpy(), emb.numpy()


def test_padded_buckets_return_the_unpadded_rows(
    batch: np.ndarray, unpadded: tuple[np.ndarray, np.ndarray]
) -> None:
    backend = TorchBackend(STB1, buckets=(2, 4), warmup=False)
    assert backend.input_shape == SHAPE
    for n in (1, 3, 5):  # 1 -> bucket 2, 3 -> 4, 5 -> 4 + 2 (chunks of the largest)
        logits, emb = backend(batch[:n])
        assert logits.dtype == emb.dtype == np.float32
        assert logits.shape == (n, 22) and emb.shape[0] == n
        np.testing.assert_allclose(logits, unpadded[0][:n], atol=1e-4)
        np.testing.assert_allclose(emb, unpadded[1][:n], atol=1e-4)
    assert backend.calls_by_bucket == {2: 2, 4: 2}


def test_matches_onnx_runtime_and_takes_tensors(
    batch: np.ndarray, unpadded: tuple[np.ndarray, np.ndarray]
) -> None:
    backend = TorchBackend(STB1, channels_last=False, buckets=(4,), warmup=False)
    ort_logits, ort_emb = OnnxBackend(STB1, threads=1)(batch[:4])
    logits, emb = backend(torch.from_numpy(batch[:4]))
    assert isinstance(logits, np.ndarray)
    np.testing.assert_allclose(logits, ort_logits, atol=1e-4)
    np.testing.assert_allclose(emb, ort_emb, atol=1e-4)


def test_bf16_runs_on_the_cpu_and_returns_float32(
    batch: np.ndarray, unpadded: tuple[np.ndarray, np.ndarray]
) -> None:
    backend = TorchBackend(STB1, precision="bf16", buckets=(2,), warmup=False)
    assert {b.dtype for b in backend.module.buffers()} == {torch.bfloat16}
    logits, _ = backend(batch[:2])
    assert logits.dtype == np.float32
    err = np.abs(logits - unpadded[0][:2]).max()
    assert 0 < err < 0.05 * np.abs(unpadded[0][:2]).max()  # bf16's 8-bit mantissa shows


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"precision": "fp16"}, ValueError, "'fp16' needs a CUDA device"),
        ({"precision": "fp8"}, ValueError, "precision must be one of"),
        ({"device": "tpu"}, ValueError, "device must be 'cpu', 'cuda' or 'cuda:N'"),
        ({"buckets": ()}, ValueError, "buckets must be positive"),
        ({"input_shape": (3, 8, 96, 160)}, ModelError, "does not fit the graph's"),
    ],
)
def test_settings_refused(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        TorchBackend(STB1, warmup=False, **kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="sees no CUDA device"):
        TorchBackend(STB1, device="cuda", precision="fp16")


def test_bad_batches_are_refused() -> None:
    backend = TorchBackend(STB1, buckets=(1,), warmup=False)
    with pytest.raises(ValueError, match="the model wants"):
        backend(np.zeros((1, 3, 8, 96, 160), np.float32))
    with pytest.raises(ValueError, match="empty batch"):
        backend(np.zeros((0, *SHAPE), np.float32))


def test_calls_from_several_threads_get_their_own_rows(
    batch: np.ndarray, unpadded: tuple[np.ndarray, np.ndarray]
) -> None:
    backend = TorchBackend(STB1, buckets=(1, 2, 4), warmup=False)
    errors: list[BaseException] = []

    def work(start: int, n: int) -> None:
        try:
            for _ in range(3):
                logits, _ = backend(batch[start : start + n])
                np.testing.assert_allclose(logits, unpadded[0][start : start + n], atol=1e-4)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=a) for a in ((0, 1), (1, 2), (2, 3), (4, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_create_backend_picks_the_runtime() -> None:
    assert isinstance(create_backend(STB1, RuntimeOptions()), OnnxBackend)
    torch_backend = create_backend(STB1, RuntimeOptions(runtime="torch", max_batch_size=3))
    assert isinstance(torch_backend, TorchBackend)
    assert torch_backend.buckets == (1, 2, 3) == buckets_up_to(3)
    assert torch_backend.precision == "fp32"


def test_device_preprocessing_is_the_host_definition() -> None:
    spec = InputSpec(4, 6, 5, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    frames = np.random.default_rng(3).integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    want = preprocess(frames, spec)
    tchw = torch.from_numpy(frames).permute(0, 3, 1, 2)
    got_u8 = preprocess_tensor(tchw, spec)
    got_f32 = preprocess_tensor(tchw.float() / 255.0, spec)
    assert got_u8.shape == want.shape and got_u8.dtype == torch.float32
    np.testing.assert_allclose(got_u8.numpy(), want, atol=1e-5)
    np.testing.assert_allclose(got_f32.numpy(), want, atol=1e-5)
    with pytest.raises(ValueError, match="the model wants"):
        preprocess_tensor(tchw[:, :, :5], spec)


def test_tiny_artifact_runs_with_its_metadata_shape(model_repo: Path) -> None:
    """An artifact exported by training loads in the torch runtime with no training code."""
    path = model_repo / "tiny" / "1" / "model.onnx"
    x = np.random.default_rng(4).standard_normal((3, *SHAPE)).astype(np.float32)
    want = OnnxBackend(path, threads=1)(x)
    got = TorchBackend(path, buckets=(4,), input_shape=SHAPE)(x)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


# ------------------------------------------------- on a CUDA device (skipped without one)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_graph_replay_matches_eager_and_fp32(
    batch: np.ndarray, unpadded: tuple[np.ndarray, np.ndarray], precision: str
) -> None:
    graphs = TorchBackend(STB1, device="cuda", precision=precision, buckets=(1, 2, 4))
    eager = TorchBackend(
        STB1, device="cuda", precision=precision, buckets=(1, 2, 4), cuda_graphs=False
    )
    assert sorted(graphs._graphs) == [1, 2, 4] and not eager._graphs
    scale = float(np.abs(unpadded[0]).max())
    for n in (1, 3, 5):
        got, want = graphs(batch[:n]), eager(batch[:n])
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-3 * max(1.0, scale))
        np.testing.assert_allclose(got[0], unpadded[0][:n], atol=0.05 * scale)
    on_device = graphs(torch.from_numpy(batch[:3]).cuda())
    np.testing.assert_array_equal(on_device[0], graphs(batch[:3])[0])


@cuda
def test_cuda_memory_stays_flat_across_calls(batch: np.ndarray) -> None:
    backend = TorchBackend(STB1, device="cuda", precision="fp16", buckets=(1, 2, 4))
    backend(batch[:4])
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for i in range(200):
        backend(batch[: 1 + i % 5])
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


@cuda
def test_cuda_upload_is_read_after_the_batches_queued_before_it() -> None:
    """`frames_on_device` (the server's event loop, per request) gives the host definition's
    input, and work queued on the default stream after it reads the finished input even when
    a long batch runs there meanwhile."""
    from vidtag.runtime.upload import frames_on_device

    spec = InputSpec(8, 64, 48, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    frames = np.random.default_rng(5).integers(0, 256, (8, 64, 48, 3), dtype=np.uint8)
    x = frames_on_device(frames, spec, "cuda")
    assert x.device.type == "cuda" and x.dtype == torch.float32
    np.testing.assert_allclose(x.cpu().numpy(), preprocess(frames, spec), atol=1e-5)
    torch.cuda._sleep(1_000_000_000)  # ~0.5 s of GPU on the default stream: a long batch
    other = 255 - frames  # not what reused memory may still hold
    y = frames_on_device(other, spec, "cuda") * 1.0  # default stream, after the batch
    np.testing.assert_allclose(y.cpu().numpy(), preprocess(other, spec), atol=1e-5)


def test_upload_on_the_cpu_is_the_host_definition() -> None:
    from vidtag.runtime.upload import frames_on_device

    spec = InputSpec(4, 32, 24, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    frames = np.random.default_rng(6).integers(0, 256, (4, 32, 24, 3), dtype=np.uint8)
    x = frames_on_device(frames, spec, "cpu")
    assert tuple(x.shape) == (3, 4, 32, 24)
    np.testing.assert_allclose(x.numpy(), preprocess(frames, spec), atol=1e-5)
