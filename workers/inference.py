"""One model's serving loop: preprocessed items in, one `session.run` per batch, one transaction
per batch out."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from onnxq.errors import InferenceFailed, OnnxqError
from schema.jobs import BatchOutcome, Success
from schema.tables import PytorchModel
from workers import metrics
from workers.batcher import MicroBatcher
from workers.modelconfig import ModelConfig
from workers.sessions import LoadedSession
from workers.writer import BatchWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A job whose image is already a tensor, waiting for its batch."""

    job_id: str
    user_id: str | None
    input_hash: str
    picked_at: datetime
    tensor: NDArray[np.float32]
    preprocessing_ms: float
    api_key_name: str | None = None
    created_at: datetime | None = None  # when the producer accepted the job
    variant: str | None = None  # the A/B arm, when an A/B test chose the model


@dataclass(frozen=True)
class Outcome:
    """What happened to one job of a batch; `written` resolves once it is committed."""

    job_id: str
    written: Future[set[str]]
    error: OnnxqError | None = None


def _finite(probs: NDArray[np.float32]) -> NDArray[np.float32] | OnnxqError:
    """The probabilities, or an error when the model produced NaN or infinity for this input."""
    if np.isfinite(probs).all():
        return probs
    return InferenceFailed("The model produced no finite probabilities for this input.")


class ModelRunner:
    """Serves one model version on one device: its session, its batcher, its batch writes."""

    def __init__(self, model: PytorchModel, config: ModelConfig, loaded: LoadedSession, writer: BatchWriter) -> None:
        assert model.id is not None
        self.model = model
        self.model_id = model.id
        self.config = config
        self.loaded = loaded
        self.writer = writer
        self.batcher: MicroBatcher[Prepared, Outcome] = MicroBatcher(
            self.run_batch,
            max_batch_size=loaded.max_batch_size,
            max_wait_ms=config.batching.max_wait_ms,
            name=f"batcher-{model.ref}",
        )

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    def infer(self, items: list[Prepared]) -> tuple[list[NDArray[np.float32] | OnnxqError], float]:
        """Probabilities per item, and the run time in ms. A failed batch is retried item by item,
        so one bad input fails only its own job."""
        started = time.perf_counter()
        try:
            probs = self.loaded.run(np.stack([item.tensor for item in items]))
            return [_finite(p) for p in probs], (time.perf_counter() - started) * 1000
        except Exception as exc:
            if len(items) == 1:
                return [InferenceFailed(f"The model failed on this input ({type(exc).__name__}).")], (
                    time.perf_counter() - started
                ) * 1000
            log.warning("batch of %d failed on %s; retrying item by item", len(items), self.model.ref)
        outputs: list[NDArray[np.float32] | OnnxqError] = []
        for item in items:
            try:
                outputs.append(_finite(self.loaded.run(item.tensor[None])[0]))
            except Exception as exc:
                outputs.append(InferenceFailed(f"The model failed on this input ({type(exc).__name__})."))
        return outputs, (time.perf_counter() - started) * 1000

    def result_for(self, probs: NDArray[np.float32], item: Prepared, batch_size: int, run_ms: float) -> Success:
        labels = self.config.labels
        best = int(np.argmax(probs))
        confidence = float(probs[best])
        result: dict[str, Any] = {
            "model": self.model.model_name,
            "model_version": self.model.model_version,
            "prediction": labels[best],
            "confidence": confidence,
            "probabilities": {label: float(p) for label, p in zip(labels, probs, strict=True)},
            "batch_size": batch_size,
            "timings_ms": {"preprocessing": round(item.preprocessing_ms, 3), "inference": round(run_ms, 3)},
        }
        return Success(
            job_id=item.job_id,
            user_id=item.user_id,
            api_key_name=item.api_key_name,
            variant=item.variant,
            input_hash=item.input_hash,
            result=result,
            confidence=confidence,
            inference_ms=round(run_ms, 3),
            batch_size=batch_size,
            started_at=item.picked_at,
        )

    def run_batch(self, items: list[Prepared]) -> list[Outcome]:
        """The batcher's handler: mark running, run, hand every outcome to the writer.

        It does not wait for the commit: the next batch runs while this one is written.
        """
        self.writer.mark_running({item.job_id: item.picked_at for item in items})
        outputs, run_ms = self.infer(items)
        metrics.observe_batch(self.model.ref, run_ms / 1000, [(item.created_at, item.picked_at) for item in items])
        successes: list[Success] = []
        failures: list[tuple[str, OnnxqError]] = []
        for item, output in zip(items, outputs, strict=True):
            if isinstance(output, OnnxqError):
                failures.append((item.job_id, output))
            else:
                successes.append(self.result_for(output, item, len(items), run_ms))
        written = self.writer.finish(BatchOutcome(self.model_id, successes, failures))
        errors = dict(failures)
        metrics.observe_written(self.model.ref, written, {item.job_id: item.created_at for item in items}, set(errors))
        return [Outcome(item.job_id, written, errors.get(item.job_id)) for item in items]
