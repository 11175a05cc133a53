"""The Dramatiq actors. They take job ids, never objects, and are idempotent: at-least-once
delivery means a message may arrive twice."""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq

from onnxq import notify, payloads
from onnxq.errors import OnnxqError, PayloadMissing, PermanentError, RetriesExhausted
from onnxq.images import image_limits
from onnxq.settings import get_settings
from schema.db import session_scope
from schema.jobs import fail_job
from schema.tables import TERMINAL_STATUSES, Job, utcnow
from workers.broker import INFERENCE_QUEUE, MAINTENANCE_QUEUE, ROUTING_QUEUE, broker
from workers.inference import ModelRunner, Prepared
from workers.preprocess import preprocess
from workers.runtime import get_runtime

log = logging.getLogger(__name__)
_settings = get_settings()


def _fail(job_id: str, error: OnnxqError) -> None:
    with session_scope() as session:
        fail_job(session, job_id, error)
    payloads.delete(job_id)
    notify.publish_ended([job_id])
    log.info("job %s failed: %s", job_id, error.code)


def _payload_gone(job_id: str) -> None:
    """No payload: a redelivery of a job that already ended (nothing to do), or a job whose
    input expired or was purged (it fails with `payload_missing`)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("message for unknown job %s dropped", job_id)
            return
        if job.status in TERMINAL_STATUSES:
            return
    _fail(job_id, PayloadMissing("The job's input expired or was purged before a worker ran it."))


@dramatiq.actor(queue_name=MAINTENANCE_QUEUE, max_retries=10, broker=broker)
def fail_exhausted_job(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    """Called by Dramatiq when a job's retries run out: the job ends `failed`, not lost."""
    job_id = str(message["args"][0])
    traceback_tail = str(message.get("options", {}).get("traceback", "")).strip().splitlines()[-1:]
    reason = traceback_tail[0][:300] if traceback_tail else "unknown error"
    _fail(
        job_id,
        RetriesExhausted(f"The job failed {retry_info.get('retries', '?')} times on a transient error ({reason})."),
    )


# Both job actors: transient errors retried with backoff, then the job ends `retries_exhausted`.
JOB_RETRIES: dict[str, Any] = {
    "max_retries": _settings.job_max_retries,
    "min_backoff": _settings.job_min_backoff_ms,
    "max_backoff": _settings.job_max_backoff_ms,
    "on_retry_exhausted": fail_exhausted_job.actor_name,
    "broker": broker,
}


@dramatiq.actor(queue_name=INFERENCE_QUEUE, **JOB_RETRIES)
def run_inference(job_id: str) -> None:
    """Decode one job's image in this worker thread, then wait for its batch to be run and written.

    Permanent errors end the job at once with their code; anything else (database or Redis down)
    is raised so Dramatiq retries the message with backoff.
    """
    prepared = prepare(job_id)
    if prepared is None:
        return
    runner, item = prepared
    outcome = runner.batcher.submit(item).result()
    outcome.written.result()  # acknowledge the message only once its result is committed
    if outcome.error is not None:
        log.info("job %s failed: %s", job_id, outcome.error.code)


def prepare(job_id: str) -> tuple[ModelRunner, Prepared] | None:
    """Fetch a job's payload and turn its image into a tensor for its model's runner.

    None when there is nothing to run: the job already ended (a redelivery), or it failed here
    with a permanent error, which is recorded.
    """
    picked_at = utcnow()
    payload = payloads.fetch(job_id)
    if payload is None:
        _payload_gone(job_id)
        return None
    try:
        runner = get_runtime().runner(payload.model_id)
        started = time.perf_counter()
        tensor = preprocess(payload.data, runner.config.input, **image_limits())
        preprocessing_ms = (time.perf_counter() - started) * 1000
    except PermanentError as error:
        _fail(job_id, error)
        return None
    return runner, Prepared(
        job_id,
        payload.user_id,
        payload.input_hash,
        picked_at,
        tensor,
        preprocessing_ms,
        payload.api_key_name,
        created_at=payload.created_at,
        variant=payload.variant,
    )


@dramatiq.actor(queue_name=ROUTING_QUEUE, **JOB_RETRIES)
def run_route(job_id: str) -> None:
    """Run one routing job: its decided backend, then fallbacks; record the answer and its cost.

    Backend failures are handled by falling back (a job with no backend left fails with
    `all_backends_failed`); database or Redis failures are raised so Dramatiq retries.
    """
    from workers.routing.job import run_routing_job

    payload = payloads.fetch_route(job_id)
    if payload is None:
        _payload_gone(job_id)
        return
    run_routing_job(payload)
    payloads.delete(job_id)
    notify.publish_ended([job_id])


@dramatiq.actor(queue_name=MAINTENANCE_QUEUE, broker=broker)
def compute_daily_metrics(day: str) -> None:
    """Recompute one UTC day (ISO date) of daily metrics: an upsert, so a redelivery is harmless."""
    from datetime import date

    from schema.metrics import compute_day

    try:
        with session_scope() as session:
            models, backends = compute_day(session, date.fromisoformat(day))
    except PermanentError as error:
        log.warning("daily metrics of %s not computed: %s", day, error.message)
        return
    log.info("daily metrics of %s: %d model rows, %d backend rows", day, models, backends)


@dramatiq.actor(queue_name=MAINTENANCE_QUEUE, max_retries=0, broker=broker)
def sweep_jobs() -> None:
    """Re-send or fail (`lost`) the jobs whose message Redis no longer holds. Not retried: the
    scheduler sends the next sweep within minutes."""
    from workers.sweep import sweep_lost_jobs

    sweep_lost_jobs(utcnow())


@dramatiq.actor(queue_name=MAINTENANCE_QUEUE, max_retries=0, broker=broker)
def evaluate_abtests() -> None:
    """Evaluate the running A/B tests, closing those that ended or showed a significant
    difference at a look. Not retried: the scheduler sends the next evaluation within minutes."""
    from workers.abtests import evaluate_all

    closed = evaluate_all(utcnow())
    if closed:
        log.info("A/B tests closed: %s", ", ".join(closed))


@dramatiq.actor(queue_name=MAINTENANCE_QUEUE, max_retries=5, broker=broker)
def purge_old() -> None:
    """Delete jobs, route logs and audit rows past their retention (each step is idempotent)."""
    from workers.sweep import purge_expired

    purge_expired(utcnow())
