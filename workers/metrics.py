"""Worker metrics for Prometheus: batch sizes, inference time, job latency, finished jobs.

`onnxq worker` serves them on `ONNXQ_WORKER_METRICS_PORT` (0: off) through Dramatiq's own
Prometheus middleware, which adds its message counters (`dramatiq_*`). A worker runs several
processes, so prometheus-client runs in multiprocess mode: every process writes its samples to
files under `<data dir>/worker-metrics`, and the exposition server (a process Dramatiq forks)
adds them up at each scrape.

prometheus-client chooses between in-memory and file-backed values when it is first imported,
and the middleware points it at the directory only at process boot, after the actors (and this
module) are imported. So this module imports it when the first sample is recorded, never at
import time.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import dramatiq

from onnxq.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
INFERENCE_S_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LATENCY_S_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


def metrics_dir(settings: Settings) -> Path:
    """Where the worker processes of this host write their samples."""
    return (settings.data_dir / "worker-metrics").resolve()


def prometheus_middleware(settings: Settings) -> dramatiq.Middleware:
    """Dramatiq's Prometheus middleware, set to serve this worker's metrics on the metrics port."""
    # The middleware module reads its directory and port from these variables (lower case is
    # Dramatiq's spelling) when imported.
    os.environ["dramatiq_prom_db"] = str(metrics_dir(settings))  # noqa: SIM112
    os.environ["dramatiq_prom_port"] = str(settings.worker_metrics_port)  # noqa: SIM112
    from dramatiq.middleware.prometheus import Prometheus

    return Prometheus()


def clear_metrics_dir(settings: Settings) -> None:
    """Remove the previous run's sample files before a worker starts: prometheus-client adds up
    every file in the directory, so a dead run's counts would otherwise be served forever."""
    directory = metrics_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Metrics:
    batch_size: Histogram
    inference_s: Histogram
    job_latency_s: Histogram
    jobs_finished: Counter


# Two models' batch threads may record their first batches at once: without the lock both would
# create (and register) the metrics, and the second registration fails.
_metrics_lock = threading.Lock()


def _metrics() -> _Metrics:
    with _metrics_lock:
        return _create_metrics()


@lru_cache(maxsize=1)
def _create_metrics() -> _Metrics:
    # Imported on first use, not at module import: see the module docstring.
    from prometheus_client import Counter, Histogram

    return _Metrics(
        batch_size=Histogram("onnxq_batch_size", "Jobs per session.run batch.", ["model"], buckets=BATCH_SIZE_BUCKETS),
        inference_s=Histogram(
            "onnxq_inference_seconds",
            "Time of one batch's model run (session.run, with its item-by-item retry if the batch failed).",
            ["model"],
            buckets=INFERENCE_S_BUCKETS,
        ),
        job_latency_s=Histogram(
            "onnxq_job_latency_seconds",
            "Job latency: stage=queue from submission to a worker picking it up, stage=total from "
            "submission to its result being committed.",
            ["model", "stage"],
            buckets=LATENCY_S_BUCKETS,
        ),
        jobs_finished=Counter("onnxq_jobs_finished", "Jobs a batch ended, by final status.", ["model", "status"]),
    )


def _since_s(start: datetime, end: datetime) -> float:
    # The producer's clock stamps created_at; a host whose clock runs behind must not record a
    # negative latency.
    return max(0.0, (end - start).total_seconds())


def observe_batch(model: str, inference_s: float, queued: list[tuple[datetime | None, datetime]]) -> None:
    """Record one batch of `model`: its run time, its size, and each job's (created, picked) times."""
    metrics = _metrics()
    metrics.batch_size.labels(model).observe(len(queued))
    metrics.inference_s.labels(model).observe(inference_s)
    queue_latency = metrics.job_latency_s.labels(model, "queue")
    for created_at, picked_at in queued:
        if created_at is not None:
            queue_latency.observe(_since_s(created_at, picked_at))


def observe_written(
    model: str, written: Future[set[str]], created: dict[str, datetime | None], failed: set[str]
) -> None:
    """Once a batch's results are committed, count its jobs by status and record their total
    latency; jobs that had already ended (redeliveries) and a failed commit (retried) count nothing."""

    def done(future: Future[set[str]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        committed_at = datetime.now(UTC)
        already_ended = future.result()
        metrics = _metrics()
        total_latency = metrics.job_latency_s.labels(model, "total")
        for job_id, created_at in created.items():
            if job_id in already_ended:
                continue
            metrics.jobs_finished.labels(model, "failed" if job_id in failed else "succeeded").inc()
            if created_at is not None:
                total_latency.observe(_since_s(created_at, committed_at))

    written.add_done_callback(done)
