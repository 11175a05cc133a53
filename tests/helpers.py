"""Small helpers shared by the tests that run jobs end to end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from producer.client import wait_for_jobs
from schema.db import get_engine
from schema.tables import PytorchInferenceLog

DEMO = "chest-xray-classifier-demo"


def wait_all(job_ids: list[str], timeout_s: float = 60) -> dict[str, dict[str, Any]]:
    views = wait_for_jobs(job_ids, timeout_s=timeout_s)
    unfinished = [v for v in views.values() if v["status"] not in ("succeeded", "failed")]
    assert not unfinished, f"jobs did not end in {timeout_s}s: {unfinished[:2]}"
    return views


def audit_rows(job_ids: list[str] | None = None) -> list[PytorchInferenceLog]:
    with Session(get_engine()) as session:
        query = select(PytorchInferenceLog).order_by(col(PytorchInferenceLog.id))
        if job_ids is not None:
            query = query.where(col(PytorchInferenceLog.job_id).in_(job_ids))
        return list(session.exec(query).all())


# --- Worker processes and in-process workers (crash, CLI and repository tests) ---------------

WORKER_READY_TIMEOUT_S = 120.0
WORKER_EXIT_TIMEOUT_S = 60.0


def job_statuses(job_ids: list[str]) -> dict[str, str]:
    """job id → status, read straight from the database."""
    from schema.tables import Job

    with Session(get_engine()) as session:
        rows = session.exec(select(Job.id, Job.status).where(col(Job.id).in_(job_ids))).all()
    return {job_id: status for job_id, status in rows}


def worker_env(**extra: str) -> dict[str, str]:
    """The environment a worker subprocess runs with: the test's settings plus `extra`."""
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def spawn_onnxq(args: list[str], log_path: Any, env: dict[str, str]) -> Any:
    """`python -m onnxq ARGS` in its own process group, logging to `log_path` (as `onnxq up`
    starts its children)."""
    from onnxq.stack import spawn

    return spawn(args, env, Path(log_path))


def start_worker_process(log_path: Any, env: dict[str, str], threads: int = 16) -> Any:
    """`python -m onnxq worker` (Dramatiq forks children, hence the process group)."""
    return spawn_onnxq(["worker", "--processes", "1", "--threads", str(threads)], log_path, env)


def heartbeats_key() -> str:
    from onnxq.settings import get_settings

    return f"{get_settings().redis_namespace}-dramatiq:__heartbeats__"


def wait_for_consumer(process: Any, log_path: Any, since_ms: int, timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
    """Block until a worker other than this process's broker has fetched from Redis after
    `since_ms` (Dramatiq heartbeats on every command, enqueues included, hence the exclusion)."""
    import time

    import redis

    from workers.broker import broker

    client = redis.Redis.from_url(_redis_url())
    own = broker.broker_id
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entries = client.zrangebyscore(heartbeats_key(), since_ms, "+inf")
        if any(entry.decode() != own for entry in entries):
            return
        if process.poll() is not None:
            raise AssertionError(f"the worker exited with {process.returncode}:\n{log_tail(log_path)}")
        time.sleep(0.1)
    raise AssertionError(f"no worker consumed within {timeout_s}s:\n{log_tail(log_path)}")


def _redis_url() -> str:
    from onnxq.settings import get_settings

    return get_settings().redis_url


def log_tail(log_path: Any, chars: int = 4000) -> str:
    from pathlib import Path

    path = Path(log_path)
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def kill_process_group(process: Any) -> None:
    """SIGKILL the worker and every process it forked; reap it."""
    import os
    import signal

    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait(WORKER_EXIT_TIMEOUT_S)


def stop_worker_process(process: Any) -> None:
    """Teardown: SIGTERM, a bounded wait, then SIGKILL the group if it hangs."""
    import os
    import signal
    import subprocess

    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(WORKER_EXIT_TIMEOUT_S)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # children left behind, if any
    if process.poll() is None:
        process.wait(WORKER_EXIT_TIMEOUT_S)


def queued_message_job_ids() -> set[str]:
    """The job ids of every inference message still held by the broker (queued, delayed or
    fetched but not acknowledged)."""
    import json

    import redis

    from onnxq.settings import get_settings

    client = redis.Redis.from_url(_redis_url())
    namespace = f"{get_settings().redis_namespace}-dramatiq"
    ids: set[str] = set()
    for queue in ("inference", "inference.DQ"):
        for raw in client.hvals(f"{namespace}:{queue}.msgs"):
            ids.add(str(json.loads(raw)["args"][0]))
    return ids


@contextmanager
def in_process_worker() -> Iterator[Any]:
    """A Dramatiq worker in this process, like conftest's `worker` fixture, for tests that change
    the settings (model dir) before it starts."""
    import dramatiq

    import workers.actors  # noqa: F401  (declares the actors on the broker)
    from workers.broker import broker
    from workers.runtime import get_runtime

    get_runtime().load_active()
    w = dramatiq.Worker(broker, worker_threads=16, worker_timeout=50)
    w.start()
    try:
        yield w
    finally:
        w.stop()
        get_runtime().stop()


def unacked_message_count() -> int:
    """How many messages workers have fetched and not acknowledged (Dramatiq's ack sets)."""
    import redis

    from onnxq.settings import get_settings

    client = redis.Redis.from_url(_redis_url())
    pattern = f"{get_settings().redis_namespace}-dramatiq:__acks__.*"
    return sum(int(client.scard(key)) for key in client.scan_iter(match=pattern))  # type: ignore[arg-type]
