"""ONNX Runtime sessions: provider choice, batch-size support, warm-up and bucketed runs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from workers.modelconfig import ModelConfig

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers_for(available: list[str]) -> list[Any]:
    """CUDA first when this onnxruntime build and host offer it, CPU always as the fallback."""
    if CUDA in available:
        # HEURISTIC skips cuDNN's exhaustive algorithm search; with bucketed batch sizes each
        # shape is still seen once at warm-up, never first on a live batch.
        return [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    return [CPU]


def bucket_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to and including `max_batch_size`: the shapes a GPU session ever sees."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return sizes


def bucket_for(n: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `n` items."""
    return next(size for size in buckets if size >= n)


def has_dynamic_batch(shape: list[Any]) -> bool:
    """True when the first input dimension is symbolic (the graph accepts any batch size)."""
    return bool(shape) and not (isinstance(shape[0], int) and shape[0] > 0)


def softmax(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)


@dataclass
class LoadedSession:
    """An ONNX Runtime session for one model version, ready for batched runs."""

    session: Any
    input_name: str
    provider: str
    max_batch_size: int
    pad_to_buckets: bool
    buckets: list[int]
    probabilities_out: bool

    def run(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """One `session.run` on a stacked batch; returns class probabilities, one row per item."""
        n = batch.shape[0]
        if self.pad_to_buckets and n not in self.buckets:
            padded = np.zeros((bucket_for(n, self.buckets), *batch.shape[1:]), dtype=np.float32)
            padded[:n] = batch
            batch = padded
        (output,) = self.session.run(None, {self.input_name: batch})[:1]
        output = np.asarray(output, dtype=np.float32)[:n]
        return output if self.probabilities_out else softmax(output)


def installed_runtimes() -> list[str]:
    """Which onnxruntime distributions are installed (they share one module: one must win)."""
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
            found.append(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def load_session(path: Path, config: ModelConfig, *, ref: str) -> LoadedSession:
    """Create, configure and warm a session for `path`; logs the provider actually chosen."""
    runtimes = installed_runtimes()
    if len(runtimes) > 1:
        raise RuntimeError(
            "both onnxruntime and onnxruntime-gpu are installed; they overwrite each other's module. "
            "Reinstall with `make install` (CPU) or `make install-gpu` (GPU), which keep exactly one."
        )
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Worker threads decode images on the same cores: ONNX Runtime's threads must sleep between
    # runs instead of spinning on them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=providers_for(ort.get_available_providers()))
    # get_providers() says what the session really uses; the available list only says what the
    # build could use (CUDA is listed even when no GPU or driver is present).
    provider = session.get_providers()[0]
    model_input = session.get_inputs()[0]
    max_batch_size = config.batching.max_batch_size
    if not has_dynamic_batch(list(model_input.shape)):
        log.warning("model %s has a fixed batch dimension %s: serving it with batch size 1", ref, model_input.shape[0])
        max_batch_size = 1
    loaded = LoadedSession(
        session=session,
        input_name=model_input.name,
        provider=provider,
        max_batch_size=max_batch_size,
        pad_to_buckets=provider == CUDA,
        buckets=bucket_sizes(max_batch_size),
        probabilities_out=config.output.kind == "probabilities",
    )
    warm(loaded, config)
    log.info("model %s loaded on %s (max batch %d)", ref, provider, max_batch_size)
    return loaded


def warm(loaded: LoadedSession, config: ModelConfig) -> float:
    """Run every batch shape the session will see once, so no live job pays for a cold start."""
    spec = config.input
    sizes = loaded.buckets if loaded.pad_to_buckets else sorted({1, loaded.max_batch_size})
    started = time.perf_counter()
    for size in sizes:
        loaded.run(np.zeros((size, spec.channels, spec.height, spec.width), dtype=np.float32))
    return (time.perf_counter() - started) * 1000
