"""Decoded frames from host memory to the model's input on a torch device (the server's
CPU-decode-then-GPU path: decode worker processes send uint8 frames, the network runs on CUDA)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vidtag.runtime.artifact import InputSpec
from vidtag.runtime.preprocess import preprocess_tensor


def frames_on_device(frames: np.ndarray, spec: InputSpec, device: str) -> Any:
    """(T, H, W, 3) uint8 frames -> the (3, T, H, W) float32 input as a tensor on `device`,
    normalised there (`preprocess_tensor`: the host definition).

    A plain copy from pageable memory on the caller's (default) stream, so the batch stacked
    there later reads the finished input. Such a copy can wait for the batches already queued
    on that stream; staging through pinned memory on a stream of its own avoids that wait but
    took longer on the event loop where it was measured (one H200, a batch of 16 running
    every ~0.9 ms: 10.3 against 1.8 ms median per 688 KB input, `benchmarks/upload.py`, which
    keeps both ways and two more for the next comparison)."""
    x = torch.from_numpy(frames).to(torch.device(device), non_blocking=True)
    return preprocess_tensor(x.permute(0, 3, 1, 2), spec)
