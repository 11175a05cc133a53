"""Workers that die or stop mid-work lose nothing: real worker processes (SIGKILL, SIGTERM) and
transient database failures retried, then exhausted, through a real Dramatiq worker."""

from __future__ import annotations

import collections
import concurrent.futures
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session

from onnxq import payloads
from onnxq.settings import get_settings
from producer.client import submit_inference
from schema.audit import verify_chain
from schema.db import get_engine
from schema.tables import Job, PytorchInferenceLog
from tests.helpers import (
    DEMO,
    WORKER_EXIT_TIMEOUT_S,
    audit_rows,
    job_statuses,
    kill_process_group,
    log_tail,
    queued_message_job_ids,
    start_worker_process,
    stop_worker_process,
    unacked_message_count,
    wait_all,
    wait_for_consumer,
    worker_env,
)

JOBS = 150
# A dead worker's unacknowledged messages are requeued by the next worker's maintenance once
# its heartbeat is this old; maintenance runs on every broker command.
FAST_REQUEUE = {"ONNXQ_REDIS_HEARTBEAT_TIMEOUT_MS": "2000", "ONNXQ_REDIS_MAINTENANCE_CHANCE": "1000000"}
SOME_DONE = 5
POLL_S = 0.02
SUBMIT_THREADS = 4


def _now_ms() -> int:
    return int(time.time() * 1000)


class Submitter(threading.Thread):
    """Submits `count` jobs (the samples, cycled) in the background; ids in submission order."""

    def __init__(self, samples: list[Path], count: int) -> None:
        super().__init__(daemon=True)
        self.data = [p.read_bytes() for p in samples]
        self.count = count
        self.ids: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        # Several threads, so that a backlog forms and the worker holds prefetched messages.
        def one(i: int) -> str:
            return submit_inference(self.data[i % len(self.data)], DEMO, user_id="crash").job_id

        try:
            with concurrent.futures.ThreadPoolExecutor(SUBMIT_THREADS) as pool:
                for job_id in pool.map(one, range(self.count)):
                    self.ids.append(job_id)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> list[str]:
        self.join(60)
        assert not self.is_alive(), "submitting did not finish in 60s"
        assert self.error is None, f"submitting failed: {self.error!r}"
        assert len(self.ids) == self.count
        return self.ids


def _wait_some_succeeded(submitter: Submitter, process: subprocess.Popen[bytes], log: Path) -> collections.Counter[str]:
    """Poll until at least SOME_DONE of the submitted jobs succeeded while the worker holds
    messages it has not acknowledged yet; the status counts then."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ids = list(submitter.ids)
        counts = collections.Counter(job_statuses(ids).values()) if ids else collections.Counter()
        if counts["succeeded"] >= SOME_DONE and unacked_message_count() > 0:
            return counts
        assert process.poll() is None, f"the worker exited early ({process.returncode}):\n{log_tail(log)}"
        time.sleep(POLL_S)
    raise AssertionError(f"fewer than {SOME_DONE} jobs succeeded in 60s:\n{log_tail(log)}")


def _assert_all_succeeded_once(ids: list[str], log: Path) -> None:
    views = wait_all(ids, timeout_s=90)
    failed = [v for v in views.values() if v["status"] != "succeeded"]
    assert not failed, f"{len(failed)} jobs did not succeed, e.g. {failed[:2]}\n{log_tail(log)}"
    per_job = collections.Counter(row.job_id for row in audit_rows(ids))
    assert set(per_job) == set(ids), f"{len(set(ids) - set(per_job))} jobs have no audit row"
    assert all(n == 1 for n in per_job.values()), {k: n for k, n in per_job.items() if n != 1}
    with Session(get_engine()) as session:
        report = verify_chain(session, get_settings().audit_key_bytes())
    assert report.ok, report
    assert not [job_id for job_id in ids if payloads.fetch(job_id) is not None], "payloads left in Redis"


@pytest.fixture()
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes started by the test, stopped (or killed) at the end whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop_worker_process(process)


def _consuming_worker(
    log_path: Path, env: dict[str, str], processes: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """A worker process, started and registered for clean-up, once it consumes."""
    since = _now_ms()
    process = start_worker_process(log_path, env)
    processes.append(process)
    wait_for_consumer(process, log_path, since)
    return process


def _worker_under_load(
    samples: list[Path], tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> tuple[dict[str, str], subprocess.Popen[bytes], Submitter, Path]:
    """A consuming worker with jobs streaming through it and some already succeeded; returns its
    environment, the process, the submitter and a log path for the worker that follows."""
    env = worker_env(**FAST_REQUEUE)
    first_log = tmp_path / "worker-1.log"
    first = _consuming_worker(first_log, env, processes)
    submitter = Submitter(samples, JOBS)
    submitter.start()
    _wait_some_succeeded(submitter, first, first_log)
    return env, first, submitter, tmp_path / "worker-2.log"


@pytest.mark.slow
def test_sigkill_mid_batch_loses_nothing(
    migrated: str, samples: list[Path], tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    # Given a worker process that consumes, with jobs streaming through it
    env, first, submitter, second_log = _worker_under_load(samples, tmp_path, processes)
    # When it is SIGKILLed, children included
    kill_process_group(first)
    assert first.returncode == -signal.SIGKILL
    # (messages it had fetched and not acknowledged died with it: they must be redelivered)
    assert unacked_message_count() > 0
    ids = submitter.finish()
    at_kill = collections.Counter(job_statuses(ids).values())
    assert at_kill["succeeded"] < JOBS, f"every job had succeeded before the kill: {at_kill}"
    # And a new worker starts
    _consuming_worker(second_log, env, processes)
    # Then every job succeeds, with exactly one audit row each, and the chain holds
    _assert_all_succeeded_once(ids, second_log)


@pytest.mark.slow
def test_sigterm_finishes_the_batch_in_hand(
    migrated: str, samples: list[Path], tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    env, first, submitter, second_log = _worker_under_load(samples, tmp_path, processes)
    first_log = tmp_path / "worker-1.log"
    # When the worker's main process alone gets SIGTERM (it forwards it to its children)
    first.send_signal(signal.SIGTERM)
    try:
        code = first.wait(WORKER_EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit within {WORKER_EXIT_TIMEOUT_S}s of SIGTERM:\n{log_tail(first_log)}")
    ids = submitter.finish()
    # Then it exits cleanly, and no job is left half-done
    assert code == 0, f"exit code {code}:\n{log_tail(first_log)}"
    statuses = job_statuses(ids)
    running = [job_id for job_id, status in statuses.items() if status == "running"]
    assert not running, f"{len(running)} jobs left running after SIGTERM:\n{log_tail(first_log)}"
    assert set(statuses.values()) <= {"succeeded", "queued"}, collections.Counter(statuses.values())
    # And every job still queued has its message and its payload in Redis, to be run later
    queued = {job_id for job_id, status in statuses.items() if status == "queued"}
    held = queued_message_job_ids()
    assert queued <= held, f"{len(queued - held)} queued jobs have no message left"
    assert all(payloads.fetch(job_id) is not None for job_id in queued)
    # When a new worker starts, every job succeeds once
    _consuming_worker(second_log, env, processes)
    _assert_all_succeeded_once(ids, second_log)


# --- transient failures: the audit table is renamed away for a while ---------------------------

AUDIT_TABLE = PytorchInferenceLog.__tablename__
AWAY = f"{AUDIT_TABLE}_away"


def _rename(src: str, dst: str) -> None:
    with get_engine().begin() as conn:
        conn.execute(text(f"ALTER TABLE {src} RENAME TO {dst}"))


def _job(job_id: str) -> Job:
    with Session(get_engine()) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _wait_attempts(job_id: str, at_least: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _job(job_id).attempts >= at_least:
            return
        time.sleep(POLL_S)
    raise AssertionError(f"job {job_id} was not attempted {at_least} times in {timeout_s}s: {_job(job_id)}")


def test_transient_database_failure_is_retried_then_succeeds(worker: Any, samples: list[Path]) -> None:
    # Given the audit table is gone (every batch write fails)
    _rename(AUDIT_TABLE, AWAY)
    try:
        outcome = submit_inference(samples[0].read_bytes(), DEMO)
        # When the job has failed on it and been retried at least once
        _wait_attempts(outcome.job_id, 2)
    finally:
        # And the table comes back
        _rename(AWAY, AUDIT_TABLE)
    # Then a later retry succeeds, with one audit row
    view = wait_all([outcome.job_id], timeout_s=30)[outcome.job_id]
    assert view["status"] == "succeeded", view
    assert _job(outcome.job_id).attempts >= 2
    assert len(audit_rows([outcome.job_id])) == 1
    with Session(get_engine()) as session:
        assert verify_chain(session, get_settings().audit_key_bytes()).ok
    assert payloads.fetch(outcome.job_id) is None


def test_transient_failure_outlasting_retries_fails_the_job(worker: Any, samples: list[Path]) -> None:
    # Given the audit table is gone for longer than every retry
    _rename(AUDIT_TABLE, AWAY)
    try:
        outcome = submit_inference(samples[0].read_bytes(), DEMO)
        view = wait_all([outcome.job_id], timeout_s=30)[outcome.job_id]
    finally:
        _rename(AWAY, AUDIT_TABLE)
    # Then the job ends failed with retries_exhausted (not lost, not left running)
    assert view["status"] == "failed", view
    assert view["error"]["code"] == "retries_exhausted", view
    assert view["result"] is None
    job = _job(outcome.job_id)
    assert job.attempts == get_settings().job_max_retries + 1, job
    assert audit_rows([outcome.job_id]) == []
    assert payloads.fetch(outcome.job_id) is None
    with Session(get_engine()) as session:
        assert verify_chain(session, get_settings().audit_key_bytes()).ok
