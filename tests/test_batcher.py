"""DynamicBatcher: batch formation, queue limits, deadlines, failure isolation, cancellation, stop.

The fake model returns each row's mean (and twice it), so a result shows which request it
belongs to; request i sends a tensor filled with i.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest

from vidtag.server.batcher import (
    REJECT_DEADLINE,
    REJECT_QUEUE_FULL,
    REJECT_SHUTTING_DOWN,
    BatcherConfig,
    DynamicBatcher,
)
from vidtag.server.errors import RpcFailure

SHAPE = (3, 2, 4, 4)


def clip(value: float) -> np.ndarray:
    return np.full(SHAPE, value, dtype=np.float32)


class FakeModel:
    """Records batch sizes and the rows it saw; sleeps `seconds` (in its worker thread); raises
    for any batch holding a row in `poison`."""

    def __init__(self, seconds: float = 0.005, poison: frozenset[float] = frozenset()) -> None:
        self.seconds = seconds
        self.poison = poison
        self.sizes: list[int] = []
        self.seen: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        means = batch.reshape(len(batch), -1).mean(axis=1)
        with self._lock:
            self.sizes.append(len(batch))
            self.seen.extend(float(m) for m in means)
        time.sleep(self.seconds)
        bad = self.poison.intersection(float(m) for m in means)
        if bad:
            raise ValueError(f"poisoned rows {sorted(bad)}")
        return means[:, None].astype(np.float32), np.stack([means, 2 * means], axis=1)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.dequeued = 0
        self.rejects: list[str] = []

    def on_batch(self, size: int, infer_seconds: float) -> None:
        assert infer_seconds >= 0
        self.batches.append(size)

    def on_dequeue(self, queue_seconds: float) -> None:
        assert queue_seconds >= 0
        self.dequeued += 1

    def on_reject(self, reason: str) -> None:
        self.rejects.append(reason)


def run_with(
    model: FakeModel,
    body: Callable[[DynamicBatcher], Awaitable[None]],
    observer: Recorder | None = None,
    **config: Any,
) -> None:
    """Start a batcher over `model`, run `body` against it, then stop it (draining)."""

    async def main() -> None:
        batcher = DynamicBatcher(model, BatcherConfig(**config), name="tiny", observer=observer)
        await batcher.start()
        try:
            await body(batcher)
        finally:
            await batcher.stop()

    asyncio.run(main())


def check(result: tuple[np.ndarray, ...], value: float) -> None:
    logits, emb = result
    assert logits.shape == (1,) and emb.shape == (2,)
    assert logits[0] == pytest.approx(value)
    assert emb.tolist() == pytest.approx([value, 2 * value])


def status(exc_info: pytest.ExceptionInfo[RpcFailure]) -> grpc.StatusCode:
    return exc_info.value.code


def test_concurrent_load_fills_batches_up_to_max() -> None:
    model = FakeModel()
    rec = Recorder()

    async def body(b: DynamicBatcher) -> None:
        results = await asyncio.gather(*(b.submit(clip(i)) for i in range(10)))
        for i, result in enumerate(results):
            check(result, i)

    run_with(model, body, observer=rec, max_batch_size=4)
    assert model.sizes == [4, 4, 2]
    assert rec.batches == [4, 4, 2] and rec.dequeued == 10 and rec.rejects == []


def test_batches_grow_while_one_runs() -> None:
    model = FakeModel(seconds=0.05)

    async def body(b: DynamicBatcher) -> None:
        first = asyncio.create_task(b.submit(clip(0)))
        await asyncio.sleep(0.01)  # the idle batcher has started a batch of 1
        assert b.in_flight == 1
        rest = [asyncio.create_task(b.submit(clip(i))) for i in range(1, 7)]
        await asyncio.sleep(0)
        assert b.queue_depth == 6
        check(await first, 0)
        for i, task in enumerate(rest, start=1):
            check(await task, i)

    run_with(model, body, max_batch_size=4)
    assert model.sizes == [1, 4, 2]


def test_queue_delay_lets_a_second_request_join() -> None:
    model = FakeModel()

    async def body(b: DynamicBatcher) -> None:
        start = time.monotonic()
        first = asyncio.create_task(b.submit(clip(1)))
        await asyncio.sleep(0.005)
        check(await b.submit(clip(2)), 2)
        check(await first, 1)
        assert time.monotonic() - start >= 0.019
        # Alone, a request still goes once the delay is over.
        check(await b.submit(clip(3)), 3)

    run_with(model, body, max_batch_size=4, max_queue_delay_microseconds=20_000)
    assert model.sizes == [2, 1]


def test_zero_delay_runs_a_lone_request_at_once() -> None:
    model = FakeModel(seconds=0.001)

    async def body(b: DynamicBatcher) -> None:
        first = asyncio.create_task(b.submit(clip(1)))
        await asyncio.sleep(0.005)
        check(await b.submit(clip(2)), 2)
        check(await first, 1)

    run_with(model, body, max_batch_size=4)
    assert model.sizes == [1, 1]


def test_preferred_size_dispatches_before_the_delay() -> None:
    model = FakeModel()

    async def main() -> None:
        config = BatcherConfig(
            max_batch_size=8, max_queue_delay_microseconds=2_000_000, preferred_batch_sizes=(2, 4)
        )
        b = DynamicBatcher(model, config)
        await b.start()
        tasks = [asyncio.create_task(b.submit(clip(i))) for i in range(5)]
        # 5 queued: a batch of 4 (the largest preferred size caps it, as in Triton) goes at once;
        # the 5th waits for the 2 s delay, or for stop() to drain it.
        done, _ = await asyncio.wait(tasks[:4], timeout=0.5)
        assert len(done) == 4 and not tasks[4].done()
        await b.stop(drain=True)
        for i, task in enumerate(tasks):
            check(task.result(), i)

    asyncio.run(main())
    assert model.sizes == [4, 1]


def test_preferred_size_reached_exactly() -> None:
    model = FakeModel()

    async def body(b: DynamicBatcher) -> None:
        start = time.monotonic()
        results = await asyncio.gather(*(b.submit(clip(i)) for i in range(2)))
        assert time.monotonic() - start < 0.5
        check(results[1], 1)

    run_with(
        model,
        body,
        max_batch_size=8,
        max_queue_delay_microseconds=2_000_000,
        preferred_batch_sizes=(2, 4),
    )
    assert model.sizes == [2]


def test_queue_full_is_resource_exhausted_and_the_rest_succeed() -> None:
    model = FakeModel(seconds=0.05)
    rec = Recorder()

    async def body(b: DynamicBatcher) -> None:
        running = asyncio.create_task(b.submit(clip(0)))
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(b.submit(clip(i))) for i in (1, 2)]
        await asyncio.sleep(0)
        assert b.queue_depth == 2 and b.in_flight == 1
        with pytest.raises(RpcFailure) as exc_info:
            await b.submit(clip(3))
        assert status(exc_info) is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full (2 waiting)" in exc_info.value.message
        check(await running, 0)
        for i, task in zip((1, 2), waiting, strict=True):
            check(await task, i)

    run_with(model, body, observer=rec, max_batch_size=1, max_queue_size=2)
    assert rec.rejects == [REJECT_QUEUE_FULL]
    assert 3.0 not in model.seen


def test_expired_deadline_never_reaches_the_model() -> None:
    model = FakeModel(seconds=0.05)
    rec = Recorder()

    async def body(b: DynamicBatcher) -> None:
        running = asyncio.create_task(b.submit(clip(0)))
        await asyncio.sleep(0.01)
        doomed = asyncio.create_task(b.submit(clip(1), deadline=time.monotonic() + 0.01))
        fine = asyncio.create_task(b.submit(clip(2), deadline=time.monotonic() + 10))
        check(await running, 0)
        with pytest.raises(RpcFailure) as exc_info:
            await doomed
        assert status(exc_info) is grpc.StatusCode.DEADLINE_EXCEEDED
        check(await fine, 2)
        # Already expired at submit: refused at once.
        with pytest.raises(RpcFailure) as exc_info:
            await b.submit(clip(3), deadline=time.monotonic() - 1)
        assert status(exc_info) is grpc.StatusCode.DEADLINE_EXCEEDED

    run_with(model, body, observer=rec, max_batch_size=4)
    assert model.seen == [0.0, 2.0] and model.sizes == [1, 1]
    assert rec.rejects == [REJECT_DEADLINE, REJECT_DEADLINE]


def test_poisoned_row_fails_alone() -> None:
    model = FakeModel(poison=frozenset({2.0}))
    rec = Recorder()

    async def body(b: DynamicBatcher) -> None:
        results = await asyncio.gather(
            *(b.submit(clip(i)) for i in range(4)), return_exceptions=True
        )
        for i, result in enumerate(results):
            if i == 2:
                assert isinstance(result, ValueError) and "poisoned" in str(result)
            else:
                assert isinstance(result, tuple)
                check(result, i)

    run_with(model, body, observer=rec, max_batch_size=4)
    assert model.sizes == [4, 1, 1, 1, 1]
    assert rec.batches == [1, 1, 1]  # only successful calls are reported


def test_bad_output_shape_is_an_error_not_a_misrouted_row() -> None:
    def wrong(batch: np.ndarray) -> tuple[np.ndarray]:
        return (np.zeros((len(batch) + 1, 2), np.float32),)

    async def main() -> None:
        b = DynamicBatcher(wrong, BatcherConfig())
        await b.start()
        with pytest.raises(ValueError, match="for a batch of 1"):
            await b.submit(clip(1))
        await b.stop()

    asyncio.run(main())


def test_cancelled_submits_do_not_disturb_others() -> None:
    model = FakeModel(seconds=0.03)

    async def body(b: DynamicBatcher) -> None:
        running = [asyncio.create_task(b.submit(clip(i))) for i in (0, 1)]
        await asyncio.sleep(0.01)
        assert b.in_flight == 2
        queued = [asyncio.create_task(b.submit(clip(i))) for i in (2, 3, 4)]
        await asyncio.sleep(0)
        running[0].cancel()  # its batch is running: the row's result is dropped
        queued[1].cancel()  # still queued: leaves the queue
        await asyncio.sleep(0)
        assert b.queue_depth == 2
        with pytest.raises(asyncio.CancelledError):
            await running[0]
        with pytest.raises(asyncio.CancelledError):
            await queued[1]
        check(await running[1], 1)
        check(await queued[0], 2)
        check(await queued[2], 4)
        check(await b.submit(clip(5)), 5)  # the scheduler carries on

    run_with(model, body, max_batch_size=4)
    assert 3.0 not in model.seen
    assert model.sizes == [2, 2, 1]


def test_stop_drains_queued_work_and_refuses_new() -> None:
    model = FakeModel(seconds=0.02)
    rec = Recorder()

    async def main() -> None:
        b = DynamicBatcher(model, BatcherConfig(max_batch_size=1), observer=rec)
        with pytest.raises(RpcFailure) as exc_info:
            await b.submit(clip(0))
        assert status(exc_info) is grpc.StatusCode.UNAVAILABLE  # not started
        await b.start()
        tasks = [asyncio.create_task(b.submit(clip(i))) for i in range(3)]
        await asyncio.sleep(0)
        stopping = asyncio.create_task(b.stop(drain=True))
        await asyncio.sleep(0)
        with pytest.raises(RpcFailure) as exc_info:
            await b.submit(clip(9))
        assert status(exc_info) is grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in exc_info.value.message
        await stopping
        for i, task in enumerate(tasks):
            assert task.done()
            check(task.result(), i)

    asyncio.run(main())
    assert model.sizes == [1, 1, 1]
    assert rec.rejects == [REJECT_SHUTTING_DOWN, REJECT_SHUTTING_DOWN]


def test_stop_without_drain_fails_queued_work() -> None:
    model = FakeModel(seconds=0.03)

    async def main() -> None:
        b = DynamicBatcher(model, BatcherConfig(max_batch_size=1))
        await b.start()
        tasks = [asyncio.create_task(b.submit(clip(i))) for i in range(3)]
        await asyncio.sleep(0.01)
        assert b.in_flight == 1 and b.queue_depth == 2
        await b.stop(drain=False)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], tuple)
        check(results[0], 0)  # the running batch completes
        for exc in results[1:]:
            assert isinstance(exc, RpcFailure) and exc.code is grpc.StatusCode.UNAVAILABLE

    asyncio.run(main())
    assert model.sizes == [1]


def test_event_loop_keeps_running_during_inference() -> None:
    model = FakeModel(seconds=0.1)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    async def body(b: DynamicBatcher) -> None:
        task = asyncio.create_task(ticker())
        check(await b.submit(clip(7)), 7)
        task.cancel()

    run_with(model, body)
    assert ticks >= 20  # ~1 ms per tick over a 100 ms inference


def test_inputs_are_checked_per_request() -> None:
    model = FakeModel()

    async def body(b: DynamicBatcher) -> None:
        check(await b.submit(clip(1)), 1)  # fixes the signature
        for bad in (np.zeros((3, 2, 4, 5), np.float32), clip(1).astype(np.float64)):
            with pytest.raises(RpcFailure) as exc_info:
                await b.submit(bad)
            assert status(exc_info) is grpc.StatusCode.INVALID_ARGUMENT

    run_with(model, body)

    async def configured(b: DynamicBatcher) -> None:
        with pytest.raises(RpcFailure, match=r"input shape \(3, 2, 4, 4\)"):
            await b.submit(clip(1))
        assert (await b.submit(np.zeros((3, 1, 4, 4), np.float32)))[0][0] == 0

    run_with(model, configured, input_shape=(3, 1, 4, 4), input_dtype="float32")


def test_a_broken_observer_does_not_break_scheduling() -> None:
    class Broken(Recorder):
        def on_batch(self, size: int, infer_seconds: float) -> None:
            raise RuntimeError("metrics down")

    async def body(b: DynamicBatcher) -> None:
        check(await b.submit(clip(4)), 4)

    run_with(FakeModel(), body, observer=Broken())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_queue_delay_microseconds": -1},
        {"max_queue_size": 0},
        {"max_batch_size": 4, "preferred_batch_sizes": (8,)},
        {"input_dtype": "not-a-dtype"},
    ],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        BatcherConfig(**kwargs)


class TensorModel(FakeModel):
    """FakeModel that also takes a torch batch and records which kind each batch was."""

    def __init__(self) -> None:
        super().__init__(seconds=0.0)
        self.kinds: list[str] = []

    def __call__(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        self.kinds.append(type(batch).__module__.split(".")[0])
        return super().__call__(batch if isinstance(batch, np.ndarray) else batch.numpy())


def test_tensor_rows_and_numpy_rows_share_a_batch() -> None:
    """GPU-decoded requests (tensors) and CPU-decoded ones (numpy) batch together: a batch
    with any tensor is one tensor, numpy rows copied to its device; rows stay in order."""
    torch = pytest.importorskip("torch")
    model = TensorModel()

    async def body(b: DynamicBatcher) -> None:
        rows = [torch.from_numpy(clip(i)) if i % 2 else clip(i) for i in range(6)]
        results = await asyncio.gather(*(b.submit(r) for r in rows))
        for i, result in enumerate(results):
            check(result, i)
        check(await b.submit(clip(7)), 7)  # alone: stays numpy

    run_with(model, body, max_batch_size=4, input_shape=SHAPE, input_dtype="float32")
    assert model.sizes == [4, 2, 1]
    assert model.kinds == ["torch", "torch", "numpy"]


def test_tensor_inputs_are_checked_like_arrays() -> None:
    torch = pytest.importorskip("torch")
    model = TensorModel()

    async def body(b: DynamicBatcher) -> None:
        for bad, what in (
            (torch.zeros((3, 2, 4, 5)), r"input shape \(3, 2, 4, 5\)"),
            (torch.zeros(SHAPE, dtype=torch.float64), "input dtype float64"),
            ([[1.0]], "must be a numpy array or torch tensor"),
        ):
            with pytest.raises(RpcFailure, match=what) as exc_info:
                await b.submit(bad)
            assert status(exc_info) is grpc.StatusCode.INVALID_ARGUMENT
        check(await b.submit(torch.full(SHAPE, 3.0)), 3)

    run_with(model, body, input_shape=SHAPE, input_dtype="float32")


def test_numpy_batches_never_need_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """With torch not importable (the CPU image), numpy requests batch as before."""
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    model = FakeModel(seconds=0.0)

    async def body(b: DynamicBatcher) -> None:
        results = await asyncio.gather(*(b.submit(clip(i)) for i in range(3)))
        for i, result in enumerate(results):
            check(result, i)

    run_with(model, body, max_batch_size=4)
    assert model.sizes == [3]
