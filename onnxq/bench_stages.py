"""The three measurements of `onnxq bench`: the in-process ceiling, and a worker (naive or the
real pipeline) measured end to end and alone, draining a queue filled beforehand."""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import Progress, TaskID

SUBMITTER_THREADS = 4
POLL_S = 0.01
SWEEP_MIN_S = 0.4  # per batch size; long enough to average out a few scheduler hiccups
SWEEP_MIN_RUNS = 1  # after one untimed run per shape; ResNet-class models take seconds per batch on a CPU
RUN_TIMEOUT_S = 900.0
WORKER_LOG_TAIL = 3000

err = Console(stderr=True)


# --- 1. the ceiling ---------------------------------------------------------------------------


def _sweep(loaded: Any, tensors: list[NDArray[np.float32]]) -> dict[int, float]:
    """Images/s of `session.run` alone at each power-of-two batch size up to the model's max."""
    from workers.sessions import bucket_sizes

    rates: dict[int, float] = {}
    for size in bucket_sizes(loaded.max_batch_size):
        batch = np.stack([tensors[i % len(tensors)] for i in range(size)])
        loaded.run(batch)  # the first run of a shape is slow (allocations): not timed
        runs, started = 0, time.perf_counter()
        while runs < SWEEP_MIN_RUNS or time.perf_counter() - started < SWEEP_MIN_S:
            loaded.run(batch)
            runs += 1
        rates[size] = size * runs / (time.perf_counter() - started)
    return rates


def _end_to_end(loaded: Any, prep: Callable[[bytes], NDArray[np.float32]], images: list[bytes], n: int, batch: int,
                pool: ThreadPoolExecutor | None, advance: Callable[[int], None]) -> float:  # fmt: skip
    """Images/s for decode + preprocess + `session.run` of `n` images in batches of `batch`.

    With a pool, preprocessing runs in its threads a few batches ahead of `session.run` (as the
    worker threads run ahead of the batcher); without, it runs inline.
    """
    started = time.perf_counter()
    if pool is None:
        for first in range(0, n, batch):
            loaded.run(np.stack([prep(images[i % len(images)]) for i in range(first, min(first + batch, n))]))
            advance(min(batch, n - first))
        return n / (time.perf_counter() - started)
    ahead: list[Future[NDArray[np.float32]]] = []
    submitted = 0
    for first in range(0, n, batch):
        # Bounded read-ahead: enough to keep the pool busy, not all n tensors in memory.
        while submitted < min(n, first + 3 * batch):
            ahead.append(pool.submit(prep, images[submitted % len(images)]))
            submitted += 1
        take, ahead = ahead[: min(batch, n - first)], ahead[min(batch, n - first) :]
        loaded.run(np.stack([future.result() for future in take]))
        advance(len(take))
    return n / (time.perf_counter() - started)


def measure_ceiling(model: Any, images: list[bytes], n: int, progress: Progress) -> dict[str, Any]:
    """The raw in-process pipeline: best batch size first, then `n` images serial and pooled."""
    from onnxq.settings import get_settings
    from workers.modelconfig import ModelConfig
    from workers.preprocess import preprocess
    from workers.repository import check_file
    from workers.sessions import load_session

    settings = get_settings()
    config = ModelConfig.model_validate(model.config)
    loaded = load_session(check_file(model, settings.model_dir), config, ref=model.ref)

    def prep(data: bytes) -> NDArray[np.float32]:
        return preprocess(
            data,
            config.input,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            min_side_px=settings.min_image_side_px,
        )

    task = progress.add_task("ceiling: batch sizes", total=None)
    sweep = _sweep(loaded, [prep(data) for data in images])
    best = max(sweep, key=lambda size: sweep[size])
    modes: dict[str, float] = {}
    progress.update(task, description=f"ceiling: serial, batch {best}", total=n, completed=0)
    modes["serial"] = _end_to_end(loaded, prep, images, n, best, None, lambda k: progress.advance(task, k))
    progress.update(task, description=f"ceiling: thread pool, batch {best}", completed=0)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="bench-prep") as pool:
        modes["thread_pool"] = _end_to_end(loaded, prep, images, n, best, pool, lambda k: progress.advance(task, k))
    progress.remove_task(task)
    mode = max(modes, key=lambda name: modes[name])
    return {
        "jobs_per_s": modes[mode],
        "mean_batch_size": float(best),
        "mode": mode,
        "modes_jobs_per_s": modes,
        "session_run_images_per_s": {str(size): rate for size, rate in sweep.items()},
        "provider": loaded.provider,
    }


# --- 2 and 3: the workers ---------------------------------------------------------------------


@contextmanager
def worker_process(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[None]:
    """A worker subprocess (own GIL, own process group), ready once its heartbeat shows; its log
    goes to `log_path` and its tail is shown if it fails to come up."""
    from onnxq.settings import get_settings
    from onnxq.stack import stop, wait_for_workers

    settings = get_settings()
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_for_workers(settings.redis_url, settings.redis_namespace)
        except RuntimeError:
            err.print(log_path.read_text(errors="replace")[-WORKER_LOG_TAIL:])
            raise
        yield
    finally:
        stop(process)


def wait_ended(
    pending: set[str], lock: threading.Lock, slots: threading.Semaphore | None, until: Callable[[int], bool],
    advance: Callable[[int], None],
) -> list[int]:  # fmt: skip
    """Poll until `until(ended_so_far)`; a job has ended when its payload is gone (both actors
    delete it last). Returns how many jobs were unfinished at each poll."""
    from onnxq import payloads

    client, done, deadline = payloads.get_redis(), 0, time.monotonic() + RUN_TIMEOUT_S
    occupancy: list[int] = []
    while not until(done):
        with lock:
            snapshot = list(pending)
        occupancy.append(len(snapshot))
        if snapshot:
            with client.pipeline(transaction=False) as pipe:
                for job_id in snapshot:
                    pipe.exists(payloads.payload_key(job_id))
                alive = pipe.execute()
            finished = [job_id for job_id, exists in zip(snapshot, alive, strict=True) if not exists]
            with lock:
                pending.difference_update(finished)
            if slots is not None:
                for _ in finished:
                    slots.release()
            done += len(finished)
            advance(len(finished))
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} jobs ended within {RUN_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
    return occupancy


def drive(
    submit: Callable[[bytes], str], images: list[bytes], n: int, in_flight: int, advance: Callable[[int], None]
) -> tuple[list[str], float]:
    """Submit `n` jobs from a few threads, never more than `in_flight` unfinished; once all have
    ended, return their ids and the mean number of unfinished jobs seen at each poll (near
    `in_flight`: the worker is the bottleneck; well below it: the producer is)."""
    ids: list[str] = []
    pending: set[str] = set()
    lock = threading.Lock()
    slots = threading.Semaphore(in_flight)
    counter = itertools.count()
    errors: list[BaseException] = []

    def submitter() -> None:
        while not errors and (index := next(counter)) < n:
            slots.acquire()
            try:
                job_id = submit(images[index % len(images)])
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                ids.append(job_id)
                pending.add(job_id)

    threads = [threading.Thread(target=submitter, daemon=True) for _ in range(SUBMITTER_THREADS)]
    for thread in threads:
        thread.start()
    occupancy = wait_ended(pending, lock, slots, lambda done: done >= n or bool(errors), advance)
    for thread in threads:
        thread.join(5)
    if errors:
        raise errors[0]
    return ids, float(np.mean(occupancy)) if occupancy else 0.0


def prefill(submit: Callable[[bytes], str], images: list[bytes], n: int, advance: Callable[[int], None]) -> list[str]:
    """Queue `n` jobs while no worker runs, so a worker started next drains a full queue."""
    with ThreadPoolExecutor(SUBMITTER_THREADS) as pool:
        futures = [pool.submit(submit, images[i % len(images)]) for i in range(n)]
        ids = []
        for future in futures:
            ids.append(future.result())
            advance(1)
    return ids


def drain_stats(job_ids: list[str]) -> dict[str, float]:
    """The worker alone: jobs/s from the first job a worker picked up to the last one finished,
    over a queue filled beforehand (the producer's cost is not in it, the worker's start-up is
    not either)."""
    from sqlmodel import Session, col, func, select

    from schema.db import get_engine
    from schema.tables import Job, PytorchInferenceLog

    with Session(get_engine()) as session:
        first, last = session.exec(
            select(func.min(Job.started_at), func.max(Job.finished_at)).where(col(Job.id).in_(job_ids))
        ).one()
        mean_batch = session.exec(
            select(func.avg(PytorchInferenceLog.batch_size)).where(col(PytorchInferenceLog.job_id).in_(job_ids))
        ).one()
    if first is None or last is None:
        raise RuntimeError("none of the drained jobs ran")
    return {"jobs_per_s": len(job_ids) / (last - first).total_seconds(), "mean_batch_size": float(mean_batch or 0)}


def job_stats(job_ids: list[str]) -> dict[str, Any]:
    """Throughput (first created → last finished), latency percentiles (created → finished) and
    the mean batch size of the audit rows, from the database."""
    from sqlmodel import Session, col, select

    from schema.db import get_engine
    from schema.tables import Job, JobStatus, PytorchInferenceLog

    created: list[datetime] = []
    finished: list[datetime] = []
    latencies: list[float] = []
    sizes: list[int] = []
    failed = 0
    with Session(get_engine()) as session:
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start : start + 500]
            for job in session.exec(select(Job).where(col(Job.id).in_(chunk))):
                if job.status != JobStatus.SUCCEEDED.value or job.finished_at is None:
                    failed += 1
                    continue
                created.append(job.created_at)
                finished.append(job.finished_at)
                latencies.append((job.finished_at - job.created_at).total_seconds() * 1000)
            sizes += session.exec(
                select(PytorchInferenceLog.batch_size).where(col(PytorchInferenceLog.job_id).in_(chunk))
            ).all()
    if not latencies:
        raise RuntimeError(f"none of the {len(job_ids)} jobs succeeded")
    p50, p95, p99 = (float(v) for v in np.percentile(latencies, [50, 95, 99]))
    span = (max(finished) - min(created)).total_seconds()
    return {
        "jobs_per_s": len(latencies) / span,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "mean_batch_size": float(np.mean(sizes)),
        "succeeded": len(latencies),
        "failed": failed,
    }


def measure_workers(
    name: str, args: list[str], submit: Callable[[bytes], str], images: list[bytes], n: int, warmup: int,
    in_flight: int, env: dict[str, str], log_path: Path, progress: Progress,
) -> dict[str, Any]:  # fmt: skip
    """Start a worker, warm it with `warmup` jobs (not counted), measure `n` jobs end to end; then
    queue `n` more with the worker stopped and measure how fast a fresh worker drains them."""
    task: TaskID = progress.add_task(f"{name}: starting the worker", total=None)
    with worker_process(args, env, log_path):
        progress.update(task, description=f"{name}: warm-up", total=warmup, completed=0)
        drive(submit, images, warmup, in_flight, lambda k: progress.advance(task, k))
        progress.update(task, description=f"{name}: {n} jobs end to end", total=n, completed=0)
        ids, occupancy = drive(submit, images, n, in_flight, lambda k: progress.advance(task, k))
        progress.update(task, description=f"{name}: stopping the worker", total=None)
    progress.update(task, description=f"{name}: queueing {n} jobs", total=n, completed=0)
    queued = prefill(submit, images, n, lambda k: progress.advance(task, k))
    progress.update(task, description=f"{name}: draining {n} jobs", total=n, completed=0)
    with worker_process(args, env, log_path):
        wait_ended(set(queued), threading.Lock(), None, lambda done: done >= n, lambda k: progress.advance(task, k))
    progress.remove_task(task)
    return {**job_stats(ids), "mean_in_flight": occupancy, "drain": drain_stats(queued)}
