"""Scheduler claims: one row per (task, period), so a period's work is enqueued once even with
two scheduler processes, or one that restarts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from schema.db import get_engine
from schema.tables import SchedulerClaim, utcnow


@contextmanager
def claimed(task: str, period: str, claimed_by: str) -> Iterator[bool]:
    """Claim `task` for `period` around the block: it sees True for the one caller that gets
    the claim, False for the rest. The claim commits only if the block succeeds, so work that
    failed to enqueue is claimed again next time; a second claimer waits for the first's commit
    (the unique row is locked meanwhile) and then sees False."""
    with get_engine().connect() as connection:
        transaction = connection.begin()
        try:
            connection.execute(
                insert(SchedulerClaim),
                {"task": task, "period": period, "claimed_at": utcnow(), "claimed_by": claimed_by},
            )
        except IntegrityError:
            transaction.rollback()
            yield False
            return
        try:
            yield True
        except BaseException:
            transaction.rollback()
            raise
        transaction.commit()


def last_period(task: str) -> str | None:
    """The latest period claimed for `task` (periods sort as they are written: ISO dates)."""
    with Session(get_engine()) as session:
        return session.exec(select(func.max(col(SchedulerClaim.period))).where(col(SchedulerClaim.task) == task)).one()
