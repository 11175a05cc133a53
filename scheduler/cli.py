"""`onnxq scheduler`: the clock process (one per deployment; a second one by mistake is harmless,
the claims keep every period single)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import typer

from schema.tables import utcnow

log = logging.getLogger(__name__)
# A night missed by up to this much (the process was down at 00:10) still runs when it is back;
# beyond it, the backfill at start catches up.
MISFIRE_GRACE_S = 6 * 3600


def scheduler() -> None:
    """Run the clock: nightly metrics and purge, sweeps every few minutes; it only enqueues."""
    from apscheduler.events import EVENT_SCHEDULER_STARTED
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    from onnxq.settings import get_settings
    from scheduler import clock

    settings = get_settings()
    at = clock.nightly_at()
    runner = BlockingScheduler(timezone="UTC")
    runner.add_job(
        lambda: clock.nightly(utcnow()),
        CronTrigger(hour=at.hour, minute=at.minute, timezone="UTC"),
        id="nightly",
        coalesce=True,
        misfire_grace_time=MISFIRE_GRACE_S,
        max_instances=1,
    )
    # The nightly task runs on every tick too, and once before start: it only enqueues nights not yet
    # claimed, so a night missed (the process down at its time, Redis down when it ran) is caught
    # up within minutes instead of the next night.
    periodic = (
        ("catch-up", lambda: _catch_up(clock), settings.sweep_every_s),
        ("sweep", lambda: clock.sweep(utcnow()), settings.sweep_every_s),
        ("abtests", lambda: clock.abtests(utcnow()), settings.abtest_every_s),
    )
    for name, task, every_s in periodic:
        runner.add_job(task, IntervalTrigger(seconds=every_s), id=name, coalesce=True, max_instances=1)

    def stop(*_: Any) -> None:
        if runner.running:
            runner.shutdown(wait=False)
        else:  # a signal before start(): start() will see it and return at once
            stopping.set()

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)

    def started(_event: Any) -> None:
        log.info("scheduler running: nightly at %s UTC, sweep every %d s", at.strftime("%H:%M"), settings.sweep_every_s)
        if stopping.is_set():
            runner.shutdown(wait=False)

    runner.add_listener(started, EVENT_SCHEDULER_STARTED)
    _catch_up(clock)  # the nights missed while this process was not running
    runner.start()
    typer.echo("scheduler stopped", err=True)


def _catch_up(clock: Any) -> None:
    """Enqueue any night not yet claimed; errors (Redis or the database down) are logged and the
    next tick tries again."""
    try:
        ran = clock.nightly(utcnow())
    except Exception:
        log.exception("catching up on nights failed; the next tick tries again")
        return
    if ran:
        log.info("caught up on %d night(s): %s", len(ran), ", ".join(n.isoformat() for n in ran))
