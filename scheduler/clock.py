"""The periodic tasks, as functions of "now": each claims its period, then enqueues the work.

- Nightly (`ONNXQ_NIGHTLY_AT`, 00:10 UTC): the night of day D recomputes the daily metrics of
  D-1, D-2 and D-3 (feedback arrives late) and purges what is past its retention.
- Every `ONNXQ_SWEEP_EVERY_S` (300 s): the sweep for lost jobs.
- Every `ONNXQ_ABTEST_EVERY_S` (300 s): the evaluation of running A/B tests.
- At start: every night missed since the last one claimed (at most `BACKFILL_MAX_NIGHTS`), so a
  scheduler that was down neither misses nor repeats a night.

Messages are sent by actor name (`dramatiq.Message`): the clock needs the broker, not the
workers' code.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, date, datetime, time, timedelta

import dramatiq

from onnxq.settings import get_settings
from schema.claims import claimed, last_period

log = logging.getLogger(__name__)

NIGHTLY_TASK = "nightly"
SWEEP_TASK = "sweep"
ABTEST_TASK = "abtests"
RECOMPUTE_DAYS = 3
BACKFILL_MAX_NIGHTS = 30
MAINTENANCE_QUEUE = "maintenance"


def me() -> str:
    """Who claims: host and pid, for the record."""
    return f"{socket.gethostname()}:{os.getpid()}"


def nightly_at() -> time:
    hour, minute = (int(part) for part in get_settings().nightly_at.split(":"))
    return time(hour, minute, tzinfo=UTC)


def latest_night(now: datetime) -> date:
    """The latest night whose run time has passed at `now` (a night is named by its date)."""
    at = nightly_at()
    today = now.astimezone(UTC).date()
    return today if now.astimezone(UTC).timetz() >= at else today - timedelta(days=1)


def send(actor_name: str, *args: str) -> None:
    """Enqueue a message for a worker actor, by name."""
    from workers.broker import broker

    broker.enqueue(
        dramatiq.Message(queue_name=MAINTENANCE_QUEUE, actor_name=actor_name, args=args, kwargs={}, options={})
    )


def run_night(night: date, already_sent: set[date] | None = None) -> bool:
    """Claim `night` and enqueue its work; False if it was already claimed (by anyone).

    `already_sent`: days a catch-up has already enqueued (nights overlap by two days), so each
    day is computed once per catch-up rather than by three concurrent workers.
    """
    sent = already_sent if already_sent is not None else set()
    with claimed(NIGHTLY_TASK, night.isoformat(), me()) as mine:
        if not mine:
            return False
        days = [night - timedelta(days=back) for back in range(1, RECOMPUTE_DAYS + 1)]
        for day in days:
            if day not in sent:
                send("compute_daily_metrics", day.isoformat())
        send("purge_old")
    sent.update(days)
    log.info("night %s: metrics of the %d days before it and the purge enqueued", night, RECOMPUTE_DAYS)
    return True


def nightly(now: datetime) -> list[date]:
    """The nightly task: the latest night, and any before it that were missed (backfill)."""
    latest = latest_night(now)
    claimed = last_period(NIGHTLY_TASK)
    # A first start has nothing to catch up on; after a gap, at most BACKFILL_MAX_NIGHTS nights.
    first = latest
    if claimed is not None:
        first = max(latest - timedelta(days=BACKFILL_MAX_NIGHTS - 1), date.fromisoformat(claimed) + timedelta(days=1))
    ran = []
    sent: set[date] = set()
    night = first
    while night <= latest:
        if run_night(night, sent):
            ran.append(night)
        night += timedelta(days=1)
    return ran


def period_of(now: datetime, every_s: int) -> str:
    """The name of the `every_s`-second period `now` falls in (its start, UTC)."""
    slot = int(now.timestamp()) // every_s * every_s
    return datetime.fromtimestamp(slot, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def sweep(now: datetime) -> bool:
    """The sweep for lost jobs, once per `ONNXQ_SWEEP_EVERY_S` period."""
    with claimed(SWEEP_TASK, period_of(now, get_settings().sweep_every_s), me()) as mine:
        if mine:
            send("sweep_jobs")
    return mine


def abtests(now: datetime) -> bool:
    """The evaluation of running A/B tests, once per `ONNXQ_ABTEST_EVERY_S` period."""
    with claimed(ABTEST_TASK, period_of(now, get_settings().abtest_every_s), me()) as mine:
        if mine:
            send("evaluate_abtests")
    return mine
