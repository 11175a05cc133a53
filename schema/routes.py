"""Routing job rows: the end of a routing job (its result and its route log, in one
transaction) and the cost report over route logs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, func, insert, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from onnxq.errors import OnnxqError
from schema.audit import append_rows, lock_chain
from schema.jobs import ERROR_MESSAGE_MAX
from schema.tables import TERMINAL_STATUSES, Job, JobStatus, RouteLog, utcnow


def finish_route(
    session: Session,
    job_id: str,
    log_row: dict[str, Any],
    *,
    result: dict[str, Any] | None = None,
    error: OnnxqError | None = None,
    audit: tuple[bytes, dict[str, Any]] | None = None,
) -> bool:
    """End a routing job (succeeded with `result`, or failed with `error`) and record its route
    log, and, when a registered model classified its image, that inference's chained audit row
    (`audit`: the key and the row). A job that already ended (a redelivery) is left alone: False.
    """
    # The chain lock first, as finish_batches explains (on SQLite it is the write lock).
    head = lock_chain(session) if audit is not None else None
    values: dict[str, Any] = {"finished_at": utcnow()}
    if error is None:
        values.update(status=JobStatus.SUCCEEDED.value, result=result)
    else:
        values.update(
            status=JobStatus.FAILED.value, error_code=error.code, error_message=error.message[:ERROR_MESSAGE_MAX]
        )
    changed = session.execute(
        update(Job).where(col(Job.id) == job_id).where(col(Job.status).not_in(TERMINAL_STATUSES)).values(**values)
    )
    if not changed.rowcount:  # type: ignore[attr-defined]
        return False
    session.execute(insert(RouteLog), [{**log_row, "job_id": job_id, "created_at": values["finished_at"]}])
    if audit is not None and head is not None:
        key, row = audit
        append_rows(session, key, head, [{**row, "job_id": job_id, "created_at": values["finished_at"]}])
    return True


def cost_rows(session: Session, since: datetime | None, api_key_name: str | None = None) -> list[dict[str, Any]]:
    """Per backend that served: requests, actual cost, and what the same queries would have cost
    on the remote tier. Jobs that no backend could serve appear under `served_by` None."""
    query = sa_select(
        col(RouteLog.served_by),
        col(RouteLog.served_tier),
        func.count(),
        func.sum(col(RouteLog.cost)),
        func.sum(col(RouteLog.all_remote_cost)),
        func.sum(case((col(RouteLog.fallback_used), 1), else_=0)),
    ).group_by(col(RouteLog.served_by), col(RouteLog.served_tier))
    if since is not None:
        query = query.where(col(RouteLog.created_at) >= since)
    if api_key_name is not None:
        query = query.where(col(RouteLog.api_key_name) == api_key_name)
    return [
        {
            "backend": backend,
            "tier": tier,
            "requests": int(count),
            "cost": float(cost or 0),
            "all_remote_cost": float(remote or 0),
            "fallbacks": int(fallbacks or 0),
        }
        for backend, tier, count, cost, remote, fallbacks in session.execute(query).all()
    ]


def first_and_last(
    session: Session, since: datetime | None, api_key_name: str | None = None
) -> tuple[datetime | None, datetime | None]:
    query = select(func.min(RouteLog.created_at), func.max(RouteLog.created_at))
    if since is not None:
        query = query.where(col(RouteLog.created_at) >= since)
    if api_key_name is not None:
        query = query.where(col(RouteLog.api_key_name) == api_key_name)
    first, last = session.exec(query).one()
    return first, last


def recent_scores(session: Session, since: datetime | None) -> list[int]:
    """The scores of routed (not forced) queries, for threshold calibration."""
    query = select(RouteLog.score).where(col(RouteLog.reason) != "forced")
    if since is not None:
        query = query.where(col(RouteLog.created_at) >= since)
    return list(session.exec(query).all())
