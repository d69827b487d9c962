"""Decoded frames from host memory to the model's input on a torch device (the server's
CPU-decode-then-GPU path: decode worker processes send uint8 frames, the network runs on CUDA)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from vidtag.runtime.artifact import InputSpec
from vidtag.runtime.preprocess import preprocess_tensor


def frames_on_device(frames: np.ndarray, spec: InputSpec, device: str) -> Any:
    """(T, H, W, 3) uint8 frames -> the (3, T, H, W) float32 input as a tensor on `device`,
    normalised there (`preprocess_tensor`: the host definition).

    On CUDA this runs on the event loop without waiting for the GPU: a copy from pageable
    memory synchronises its stream first, and on the default stream that is every batch the
    inference thread has queued (milliseconds per request, the loop frozen meanwhile). So the
    frames go through pinned memory on a stream of their own, and the default stream, where
    the batch is stacked and run, waits for that stream on the GPU instead."""
    target = torch.device(device)
    host = torch.from_numpy(frames)
    if target.type != "cuda":
        return preprocess_tensor(host.to(target).permute(0, 3, 1, 2), spec)
    side = _upload_stream(target)
    staged = host.pin_memory()  # the caching host allocator keeps it until the copy is done
    with torch.cuda.stream(side):
        x = staged.to(target, non_blocking=True).permute(0, 3, 1, 2)
        x = preprocess_tensor(x, spec)
    consumer = torch.cuda.current_stream(target)
    consumer.wait_stream(side)
    x.record_stream(consumer)  # its memory is not reused before the consumer is done with it
    return x


@functools.cache
def _upload_stream(device: Any) -> Any:
    """One upload stream per CUDA device (torch creates it non-blocking: it does not wait
    for the default stream, nor the default stream for it)."""
    return torch.cuda.Stream(device)
