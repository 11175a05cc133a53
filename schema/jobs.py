"""Job rows: creation, the states they pass through, and the shape users see."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, update
from sqlmodel import Session, col, select

from onnxq.errors import OnnxqError
from schema.audit import append_rows, lock_chain
from schema.tables import TERMINAL_STATUSES, AuditChainHead, Job, JobStatus, utcnow

ERROR_MESSAGE_MAX = 1000


def new_job_id() -> str:
    """A random, unguessable job id (32 hex characters)."""
    return uuid.uuid4().hex


def idempotency_scope(user_id: str | None, key: str, api_key_name: str | None = None) -> str:
    """The unique value that ties one idempotency key of one user (of one API key) to one job.

    Scoped by API key so that one tenant's key can never find another tenant's job; without an
    API key (CLI, Python API, auth off) the value is what it was before keys existed.
    """
    text = f"{user_id or ''}\x1f{key}"
    if api_key_name is not None:
        text = f"{api_key_name}\x1e{text}"
    return hashlib.sha256(text.encode()).hexdigest()


def find_by_scope(session: Session, scope: str) -> Job | None:
    return session.exec(select(Job).where(col(Job.idempotency_scope) == scope)).first()


def fail_job(session: Session, job_id: str, error: OnnxqError) -> bool:
    """Mark a job failed with `error`'s code, unless it already ended. True if it changed."""
    changed = session.execute(
        update(Job)
        .where(col(Job.id) == job_id)
        .where(col(Job.status).not_in(TERMINAL_STATUSES))
        .values(
            status=JobStatus.FAILED.value,
            finished_at=utcnow(),
            error_code=error.code,
            error_message=error.message[:ERROR_MESSAGE_MAX],
        )
    )
    return bool(changed.rowcount)  # type: ignore[attr-defined]


def mark_running(session: Session, started: dict[str, datetime]) -> None:
    """Move a batch of jobs to `running` in one statement (executemany); ended jobs stay ended."""
    if not started:
        return
    statement = (
        update(Job)
        .where(col(Job.id) == bindparam("b_id"))
        # Plain comparisons: an expanding NOT IN cannot be used with executemany.
        .where(col(Job.status) != JobStatus.SUCCEEDED.value, col(Job.status) != JobStatus.FAILED.value)
        .values(status=JobStatus.RUNNING.value, started_at=bindparam("b_started"), attempts=Job.attempts + 1)
    )
    session.connection().execute(statement, [{"b_id": job_id, "b_started": at} for job_id, at in started.items()])


@dataclass(frozen=True)
class Success:
    """One inference that produced a result, ready to be written."""

    job_id: str
    user_id: str | None
    input_hash: str
    result: dict[str, Any]
    confidence: float
    inference_ms: float
    batch_size: int
    started_at: datetime
    api_key_name: str | None = None
    variant: str | None = None  # the A/B arm, when an A/B test chose the model


@dataclass(frozen=True)
class BatchOutcome:
    """Everything one batch of one model produced: results and per-item failures."""

    model_id: int
    successes: Sequence[Success]
    failures: Sequence[tuple[str, OnnxqError]] = ()

    @property
    def job_ids(self) -> list[str]:
        return [s.job_id for s in self.successes] + [job_id for job_id, _ in self.failures]


AUDITED_RESULT_KEYS = ("prediction", "confidence", "probabilities")


def finish_batches(
    session: Session, audit_key: bytes, batches: Sequence[BatchOutcome], head: AuditChainHead | None = None
) -> set[str]:
    """Write the outcomes and audit rows of whole batches in the caller's transaction.

    Pass `head` if the caller already took the chain lock; otherwise it is taken here, and then
    this must be the transaction's first statement (on SQLite the lock is the write lock, which
    must be taken before anything is read). Jobs that already ended (a redelivered message) are
    left alone and get no second audit row; their ids are returned.
    """
    head = head or lock_chain(session)
    ids = [job_id for batch in batches for job_id in batch.job_ids]
    ended = set(session.exec(select(Job.id).where(col(Job.id).in_(ids)).where(col(Job.status).in_(TERMINAL_STATUSES))))
    now = utcnow()
    # One row per job even if two deliveries of a job share this transaction.
    fresh = list(
        {s.job_id: (batch.model_id, s) for batch in batches for s in batch.successes if s.job_id not in ended}.values()
    )
    if fresh:
        session.connection().execute(
            update(Job)
            .where(col(Job.id) == bindparam("b_id"))
            .values(
                status=JobStatus.SUCCEEDED.value,
                # Set by mark_running normally; kept here too for writers that skip that step.
                started_at=func.coalesce(Job.started_at, bindparam("b_started")),
                finished_at=now,
                result=bindparam("b_result"),
            ),
            [{"b_id": s.job_id, "b_started": s.started_at, "b_result": s.result} for _, s in fresh],
        )
        rows = [
            {
                "model_id": model_id,
                "user_id": s.user_id,
                "input_hash": s.input_hash,
                "inference_time_ms": s.inference_ms,
                "confidence": s.confidence,
                "result": {k: s.result[k] for k in AUDITED_RESULT_KEYS},
                "created_at": now,
                "job_id": s.job_id,
                "batch_size": s.batch_size,
                "api_key_name": s.api_key_name,
                "variant": s.variant,
            }
            for model_id, s in fresh
        ]
        append_rows(session, audit_key, head, rows)
    for batch in batches:
        for job_id, error in batch.failures:
            if job_id not in ended:
                fail_job(session, job_id, error)
    return ended


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds() * 1000, 3)


def job_view(job: Job) -> dict[str, Any]:
    """The job as users see it (CLI `--json`, HTTP)."""
    result = dict(job.result) if job.result is not None else None
    if result is not None:
        timings = dict(result.get("timings_ms") or {})
        timings["queue"] = _ms(job.created_at, job.started_at)
        timings["total"] = _ms(job.created_at, job.finished_at)
        result["timings_ms"] = timings
    return {
        "job_id": job.id,
        "kind": job.kind,
        "status": job.status,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "result": result,
        "error": {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None,
    }
