"""Housekeeping the scheduler enqueues: lost jobs found and re-sent (or failed `lost`), and rows
past their retention purged, with the audit chain left verifiable.

Finding a lost job. Dramatiq's Redis broker keys its messages by their own ids, not by job id:
a message lives in the hash `{ns}:{queue}.msgs` from enqueue to ack (queued, prefetched or being
worked on), in `{ns}:{queue}.DQ.msgs` while a retry waits out its backoff, and a job whose retries
ran out has a `fail_exhausted_job` message in the maintenance queue until it is failed. So the
sweep reads those hashes (HSCAN, a page at a time, so Redis is never blocked) and collects the
job ids their messages name. That costs one pass over every waiting message: at 100k queued
messages of ~300 bytes, about 30 MB read and a second of JSON decoding. It runs only when SQL
finds jobs past `ONNXQ_JOB_STALE_AFTER_S` (normally none), every few minutes at most. An index
of job id → message id kept by a broker middleware would make the check per job, but it would
add a write to every enqueue and every ack on the hot path, and could itself drift from the
broker's own keys; a sweep that reads the broker's keys cannot.

A message moving between hashes (a retry into the delay queue, a delayed message back into its
queue) is written to its new hash before it leaves the old one, but a scan of one hash and then
the other can still miss it in flight; jobs missing from a first pass are looked for again, and
their status is re-read before anything is done. A job wrongly judged lost would only be
delivered twice, which every actor tolerates (delivery is at-least-once).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dramatiq
from sqlalchemy import delete, func
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from onnxq import notify, payloads
from onnxq.errors import JobLost
from onnxq.payloads import get_redis, payload_key
from onnxq.settings import get_settings
from schema.audit import anchor_mac, lock_chain, row_digest
from schema.db import get_engine, session_scope
from schema.jobs import fail_job
from schema.tables import TERMINAL_STATUSES, Job, JobStatus, PytorchInferenceLog, RouteLog, SchedulerClaim
from workers.actors import fail_exhausted_job, run_inference, run_route
from workers.broker import INFERENCE_QUEUE, MAINTENANCE_QUEUE, ROUTING_QUEUE, broker

log = logging.getLogger(__name__)

ACTIVE_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
ACTOR_BY_KIND: dict[str, dramatiq.Actor[[str], None]] = {"inference": run_inference, "route": run_route}
SCAN_PAGE_MESSAGES = 1000
RESOLVE_BATCH_JOBS = 500  # ids per SQL IN list (SQLite caps bound parameters)
PURGE_BATCH_ROWS = 5000


@dataclass(frozen=True)
class SweepCounts:
    """What one sweep found: jobs past the limit, and of those the ones re-sent or failed."""

    stale: int
    requeued: int
    failed: int


@dataclass(frozen=True)
class PurgeCounts:
    """Rows (and payloads) one purge deleted."""

    jobs: int
    route_logs: int
    audit_rows: int


def sweep_lost_jobs(now: datetime) -> SweepCounts:
    """Re-send the jobs queued or running for over `ONNXQ_JOB_STALE_AFTER_S` whose message is no
    longer in Redis, or fail them `lost` when their payload is gone too. Ended jobs, and jobs
    whose message still waits, are left alone; running it again changes nothing."""
    cutoff = now - timedelta(seconds=get_settings().job_stale_after_s)
    with Session(get_engine()) as session:
        stale = set(
            session.exec(
                select(Job.id).where(col(Job.status).in_(ACTIVE_STATUSES)).where(col(Job.created_at) < cutoff)
            ).all()
        )
    if not stale:
        return SweepCounts(0, 0, 0)
    missing = stale - _jobs_with_messages(stale)
    if missing:
        missing -= _jobs_with_messages(missing)  # a second look for messages moved mid-scan
    requeued = failed = 0
    ordered = sorted(missing)
    for start in range(0, len(ordered), RESOLVE_BATCH_JOBS):
        sent, ended = _resolve(ordered[start : start + RESOLVE_BATCH_JOBS])
        requeued, failed = requeued + sent, failed + ended
    if requeued or failed:
        log.warning("sweep: %d stale jobs, %d lost messages re-sent, %d jobs failed lost", len(stale), requeued, failed)
    return SweepCounts(len(stale), requeued, failed)


def _message_hashes() -> list[str]:
    """The broker's hashes that hold the messages still to be run or finished."""
    queues = (INFERENCE_QUEUE, ROUTING_QUEUE, MAINTENANCE_QUEUE)
    return [f"{broker.namespace}:{queue}{suffix}.msgs" for queue in queues for suffix in ("", ".DQ")]


def _job_id_of(body: bytes) -> str | None:
    """The job id a message names: its first argument, or for `fail_exhausted_job` the first
    argument of the message it was called for."""
    message = json.loads(body)
    args = message.get("args") or []
    if message.get("actor_name") == fail_exhausted_job.actor_name and args and isinstance(args[0], dict):
        args = args[0].get("args") or []
    return args[0] if args and isinstance(args[0], str) else None


def _jobs_with_messages(job_ids: set[str]) -> set[str]:
    """Those of `job_ids` that a message in Redis still names."""
    found: set[str] = set()
    client = get_redis()
    for key in _message_hashes():
        for _, body in client.hscan_iter(key, count=SCAN_PAGE_MESSAGES):
            job_id = _job_id_of(body)
            if job_id in job_ids:
                found.add(job_id)
    return found


def _resolve(missing: list[str]) -> tuple[int, int]:
    """Re-send or fail the jobs without a message that are still active; (re-sent, failed)."""
    with Session(get_engine()) as session:
        active = session.exec(
            select(Job.id, Job.kind).where(col(Job.id).in_(missing)).where(col(Job.status).in_(ACTIVE_STATUSES))
        ).all()
    if not active:
        return 0, 0
    with get_redis().pipeline(transaction=False) as pipe:
        for job_id, _ in active:
            pipe.exists(payload_key(job_id))
        has_payload = [bool(n) for n in pipe.execute()]
    requeued, lost, failed = 0, [], []
    for (job_id, kind), payload_kept in zip(active, has_payload, strict=True):
        actor = ACTOR_BY_KIND.get(kind)
        if payload_kept and actor is not None:
            actor.send(job_id)
            requeued += 1
            log.info("job %s had no message left in Redis: re-sent", job_id)
        else:
            lost.append(job_id)
    if lost:
        error = JobLost("The job's message and input were lost before it ran; submit it again.")
        with session_scope() as session:
            failed = [job_id for job_id in lost if fail_job(session, job_id, error)]
        payloads.delete(*lost)
        notify.publish_ended(failed)
    return requeued, len(failed)


def purge_expired(now: datetime) -> PurgeCounts:
    """Delete jobs (and any payload left in Redis) and route logs past `ONNXQ_JOB_RETENTION_DAYS`,
    and audit rows past `ONNXQ_AUDIT_RETENTION_DAYS`; the audit chain stays verifiable from the
    anchor the purge records. Running it again changes nothing."""
    settings = get_settings()
    job_cutoff = now - timedelta(days=settings.job_retention_days)
    jobs = _purge_jobs(job_cutoff)
    route_logs = _purge_route_logs(job_cutoff)
    with session_scope() as session:
        # The scheduler's claims (one per sweep period, ~290 a day) need keeping only as long as
        # a catch-up could reach back; the latest claim per task survives whatever its age.
        latest = select(func.max(col(SchedulerClaim.id))).group_by(col(SchedulerClaim.task))
        session.execute(
            delete(SchedulerClaim)
            .where(col(SchedulerClaim.claimed_at) < job_cutoff)
            .where(col(SchedulerClaim.id).not_in(latest))
        )
    audit_rows = _purge_audit(settings.audit_key_bytes(), now - timedelta(days=settings.audit_retention_days))
    counts = PurgeCounts(jobs, route_logs, audit_rows)
    log.info("purge: %s", counts)
    return counts


def _purge_jobs(cutoff: datetime) -> int:
    """Delete ended jobs that finished before `cutoff` (and any payload they left in Redis)."""
    expired = (
        select(Job.id)
        .where(col(Job.status).in_(TERMINAL_STATUSES))
        # created_at is implied by finished_at; it lets the (status, created_at) index help.
        .where(col(Job.created_at) < cutoff)
        .where(func.coalesce(Job.finished_at, Job.created_at) < cutoff)
    )
    return _delete_in_batches(Job, expired, then=lambda ids: payloads.delete(*ids))


def _purge_route_logs(cutoff: datetime) -> int:
    """Delete route logs written before `cutoff`."""
    return _delete_in_batches(RouteLog, select(RouteLog.id).where(col(RouteLog.created_at) < cutoff))


def _delete_in_batches(
    table: type[Job] | type[RouteLog],
    ids: SelectOfScalar[Any],
    then: Callable[[list[Any]], None] = lambda _ids: None,
) -> int:
    """Delete the rows of `table` whose ids `ids` selects, `PURGE_BATCH_ROWS` per transaction (one
    long delete would hold SQLite's write lock against the workers), calling `then` with each
    batch's ids after its commit; how many were deleted."""
    purged = 0
    while True:
        with session_scope() as session:
            batch = list(session.exec(ids.limit(PURGE_BATCH_ROWS)).all())
            if batch:
                session.execute(delete(table).where(col(table.id).in_(batch)))
        then(batch)
        purged += len(batch)
        if len(batch) < PURGE_BATCH_ROWS:
            return purged


def _purge_audit(key: bytes, cutoff: datetime) -> int:
    """Delete the oldest audit rows, up to the last one before the first row newer than `cutoff`,
    a batch per transaction, moving the chain's anchor to the last row deleted.

    Only a prefix of the chain is ever deleted, so what remains is one unbroken chain; and a batch
    is checked before it is deleted, so a purge never destroys the evidence of an edited row
    (it stops and logs instead, and `onnxq audit verify` names the row).
    """
    purged = 0
    while True:
        with session_scope() as session:
            head = lock_chain(session)
            start = head.pruned_through_id
            first_kept = session.exec(
                select(func.min(PytorchInferenceLog.id))
                .where(col(PytorchInferenceLog.id) > start)
                .where(col(PytorchInferenceLog.created_at) >= cutoff)
            ).one()
            through = min(head.last_id if first_kept is None else first_kept - 1, start + PURGE_BATCH_ROWS)
            if through <= start:
                return purged
            rows = session.exec(
                select(PytorchInferenceLog)
                .where(col(PytorchInferenceLog.id) > start, col(PytorchInferenceLog.id) <= through)
                .order_by(col(PytorchInferenceLog.id))
            ).all()
            last_hash = _checked_segment(key, head.pruned_last_hash, start, through, rows)
            if last_hash is None:
                return purged
            session.execute(
                delete(PytorchInferenceLog).where(
                    col(PytorchInferenceLog.id) > start, col(PytorchInferenceLog.id) <= through
                )
            )
            through_at = max(row.created_at for row in rows)
            head.pruned_through_id, head.pruned_last_hash = through, last_hash
            head.pruned_through_at = through_at
            head.pruned_mac = anchor_mac(key, through, last_hash, through_at)
            session.add(head)
        purged += through - start


def _checked_segment(
    key: bytes, prev_hash: str, start: int, through: int, rows: Iterable[PytorchInferenceLog]
) -> str | None:
    """The last row's hash if rows `start + 1 .. through` form an intact chain after `prev_hash`;
    None (logged) if not."""
    expected_id = start + 1
    for row in rows:
        if row.id != expected_id or row.prev_hash != prev_hash or row_digest(key, row.model_dump()) != row.row_hash:
            log.error(
                "audit purge stopped at row %d: the chain is broken there (run `onnxq audit verify`)", expected_id
            )
            return None
        prev_hash, expected_id = row.row_hash, expected_id + 1
    if expected_id != through + 1:
        log.error("audit purge stopped at row %d: the row is missing (run `onnxq audit verify`)", expected_id)
        return None
    return prev_hash
