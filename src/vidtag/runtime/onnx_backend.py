"""ONNX Runtime inference on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class OnnxBackend:
    """Runs (N, 3, T, H, W) float32 -> (logits (N, C), embedding (N, E)). Thread-safe."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = 1
        # Spinning worker threads steal the decoder's cores (ANCHORS.md: decode 21-31 -> 41-48 ms).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, emb = self.session.run(None, {self.input_name: batch})
        return np.asarray(logits), np.asarray(emb)
