"""The clock with a controllable "now": nights claimed once, missed nights backfilled, two
schedulers at once, a failed enqueue retried; and the real `onnxq scheduler` process."""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis

from onnxq.settings import get_settings
from scheduler import clock
from tests.helpers import spawn_onnxq, worker_env

NIGHT = date(2026, 12, 4)


def at(day: date, hh: int, mm: int) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC)


def enqueued(client: redis.Redis) -> list[tuple[str, tuple[Any, ...]]]:
    """The maintenance messages waiting in Redis, as (actor, args), oldest first."""
    namespace = f"{get_settings().redis_namespace}-dramatiq"
    ids = client.lrange(f"{namespace}:maintenance", 0, -1)
    bodies = client.hmget(f"{namespace}:maintenance.msgs", list(reversed(ids))) if ids else []
    messages = [dramatiq.Message.decode(body) for body in bodies if body]
    return [(m.actor_name, tuple(m.args)) for m in messages]


def test_the_latest_night_turns_at_the_nightly_time(env: str) -> None:
    assert clock.latest_night(at(NIGHT, 0, 9)) == date(2026, 12, 3)
    assert clock.latest_night(at(NIGHT, 0, 10)) == NIGHT
    assert clock.latest_night(at(NIGHT, 23, 59)) == NIGHT


def test_a_night_runs_once_and_recomputes_three_days(migrated: str, redis_client: redis.Redis) -> None:
    assert clock.nightly(at(NIGHT, 0, 10)) == [NIGHT]
    assert sorted(enqueued(redis_client)) == sorted(
        [
            ("compute_daily_metrics", ("2026-12-03",)),
            ("compute_daily_metrics", ("2026-12-02",)),
            ("compute_daily_metrics", ("2026-12-01",)),
            ("purge_old", ()),
        ]
    )
    # The rerun (a second tick, a restart the same night) changes nothing
    assert clock.nightly(at(NIGHT, 0, 11)) == []
    assert clock.nightly(at(NIGHT, 13, 0)) == []
    assert len(enqueued(redis_client)) == 4


def test_missed_nights_are_backfilled_after_a_gap(migrated: str, redis_client: redis.Redis) -> None:
    assert clock.nightly(at(NIGHT, 1, 0)) == [NIGHT]
    # Down for three nights; back at 09:00 on the fourth day
    later = date(2026, 12, 8)
    assert clock.nightly(at(later, 9, 0)) == [date(2026, 12, 5), date(2026, 12, 6), date(2026, 12, 7), later]
    metrics_days = [args[0] for actor, args in enqueued(redis_client) if actor == "compute_daily_metrics"]
    # Each night recomputes its three days before; a catch-up sends each day once (the nights
    # overlap), and never a night twice
    first_night = ["2026-12-03", "2026-12-02", "2026-12-01"]
    catch_up = ["2026-12-04", "2026-12-03", "2026-12-02", "2026-12-05", "2026-12-06", "2026-12-07"]
    assert sorted(metrics_days) == sorted(first_night + catch_up)


def test_two_schedulers_at_once_enqueue_a_night_once(migrated: str, redis_client: redis.Redis) -> None:
    results: list[list[date]] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        results.append(clock.nightly(at(NIGHT, 0, 10)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(len(ran) for ran in results) == [0, 1]
    assert len(enqueued(redis_client)) == 4


def test_a_failed_enqueue_leaves_the_night_unclaimed(
    migrated: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_send = clock.send

    def broken(actor_name: str, *args: str) -> None:
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(clock, "send", broken)
    with pytest.raises(redis.ConnectionError):
        clock.nightly(at(NIGHT, 0, 10))
    monkeypatch.setattr(clock, "send", real_send)
    assert clock.nightly(at(NIGHT, 0, 15)) == [NIGHT]


def test_the_sweep_runs_once_per_period(migrated: str, redis_client: redis.Redis) -> None:
    assert clock.sweep(at(NIGHT, 10, 0))
    assert not clock.sweep(at(NIGHT, 10, 4))  # the same 5-minute period
    assert clock.sweep(at(NIGHT, 10, 5))
    assert enqueued(redis_client) == [("sweep_jobs", ()), ("sweep_jobs", ())]


@pytest.mark.slow
def test_the_scheduler_process_catches_up_and_survives_a_restart(
    migrated: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # A night claimed three days ago: the process starts, backfills to today, keeps running
    today = clock.latest_night(datetime.now(UTC))
    from datetime import timedelta

    from schema.claims import claimed

    with claimed(clock.NIGHTLY_TASK, (today - timedelta(days=3)).isoformat(), "test") as mine:
        assert mine
    for run in range(2):  # and again after a restart: nothing repeated
        log = tmp_path / f"scheduler-{run}.log"
        process = spawn_onnxq(["scheduler"], log, worker_env())
        deadline = time.monotonic() + 60
        while "scheduler running" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    metrics = [args for actor, args in enqueued(redis_client) if actor == "compute_daily_metrics"]
    # Three missed nights, each once across both runs; their days (overlapping) each sent once
    assert sorted(m[0] for m in metrics) == sorted((today - timedelta(days=back)).isoformat() for back in range(1, 6))
    sweeps = [actor for actor, _ in enqueued(redis_client) if actor == "sweep_jobs"]
    assert len(sweeps) <= 2  # at most one per run (both may fall in one 5-minute period)
