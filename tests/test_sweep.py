"""Sweeps and purges with explicit clocks: a job whose message Redis lost is re-sent (or failed
`lost`), a job whose message waits is left alone; jobs, route logs and audit rows past their
retention are deleted and the audit chain still verifies."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from onnxq import payloads
from onnxq.cli import app
from onnxq.settings import get_settings
from producer.client import submit_inference
from producer.route import submit_route
from schema.db import get_engine, session_scope
from schema.tables import Job, PytorchInferenceLog, RouteLog, utcnow
from tests.helpers import DEMO, audit_rows, in_process_worker, queued_message_job_ids, wait_all
from workers.actors import fail_exhausted_job, run_inference
from workers.broker import broker
from workers.sweep import PurgeCounts, SweepCounts, purge_expired, sweep_lost_jobs

runner = CliRunner()


def _past_the_limit() -> datetime:
    """A clock at which every job accepted so far is past `ONNXQ_JOB_STALE_AFTER_S`."""
    return utcnow() + timedelta(seconds=get_settings().job_stale_after_s + 60)


def _lose_messages(client: redis.Redis, *queues: str) -> None:
    """Delete the broker's keys of `queues` (list, message hash, delay queue): Redis lost them."""
    for queue in queues:
        for key in list(client.scan_iter(match=f"{broker.namespace}:{queue}*")):
            client.delete(key)


def _job(job_id: str) -> Job:
    with Session(get_engine()) as session:
        job = session.get(Job, job_id)
    assert job is not None
    return job


def _routing_message_job_ids(client: redis.Redis) -> list[str]:
    import json

    return [json.loads(body)["args"][0] for body in client.hvals(f"{broker.namespace}:routing.msgs")]


def test_a_job_whose_message_was_lost_is_sent_again_and_succeeds(
    migrated: str, redis_client: redis.Redis, samples: list[Path]
) -> None:
    # Given a job accepted while no worker runs
    job_id = submit_inference(samples[0].read_bytes(), DEMO).job_id
    later = _past_the_limit()
    # While its message waits, the sweep leaves it alone, however old it is
    assert sweep_lost_jobs(later) == SweepCounts(stale=1, requeued=0, failed=0)
    assert queued_message_job_ids() == {job_id}
    # When Redis loses the message
    _lose_messages(redis_client, "inference")
    assert queued_message_job_ids() == set()
    # Then a sweep before the limit still leaves the job alone
    assert sweep_lost_jobs(utcnow()) == SweepCounts(stale=0, requeued=0, failed=0)
    # And a sweep past the limit sends it again, once
    assert sweep_lost_jobs(later) == SweepCounts(stale=1, requeued=1, failed=0)
    assert sweep_lost_jobs(later) == SweepCounts(stale=1, requeued=0, failed=0)
    assert queued_message_job_ids() == {job_id}
    # And a worker runs it to the end, with one audit row
    with in_process_worker():
        view = wait_all([job_id])[job_id]
    assert view["status"] == "succeeded", view
    assert len(audit_rows([job_id])) == 1
    # An ended job is never touched again
    _lose_messages(redis_client, "inference")
    assert sweep_lost_jobs(later) == SweepCounts(stale=0, requeued=0, failed=0)


def test_a_job_without_message_or_payload_fails_lost(
    migrated: str, redis_client: redis.Redis, samples: list[Path]
) -> None:
    # Given a job whose message and payload Redis both lost
    job_id = submit_inference(samples[0].read_bytes(), DEMO).job_id
    _lose_messages(redis_client, "inference")
    payloads.delete(job_id)
    # When the sweep runs past the limit
    assert sweep_lost_jobs(_past_the_limit()) == SweepCounts(stale=1, requeued=0, failed=1)
    # Then the job ended failed with code `lost`, and nothing was sent
    job = _job(job_id)
    assert (job.status, job.error_code) == ("failed", "lost")
    assert job.finished_at is not None
    assert queued_message_job_ids() == set()
    # And a second sweep changes nothing
    assert sweep_lost_jobs(_past_the_limit()) == SweepCounts(stale=0, requeued=0, failed=0)
    assert _job(job_id).finished_at == job.finished_at


def test_messages_waiting_in_a_delay_queue_or_for_their_failure_count(
    migrated: str, redis_client: redis.Redis, samples: list[Path]
) -> None:
    # Given one job whose message waits out a retry backoff in the delay queue, and one whose
    # retries ran out and whose `fail_exhausted_job` message is still queued
    backing_off = submit_inference(samples[0].read_bytes(), DEMO).job_id
    exhausted = submit_inference(samples[1].read_bytes(), DEMO).job_id
    _lose_messages(redis_client, "inference")
    run_inference.send_with_options(args=(backing_off,), delay=3_600_000)
    fail_exhausted_job.send({"args": [exhausted], "options": {}}, {"retries": 3})
    # When the sweep runs past the limit
    counts = sweep_lost_jobs(_past_the_limit())
    # Then both are left to their messages
    assert counts == SweepCounts(stale=2, requeued=0, failed=0)
    assert {_job(backing_off).status, _job(exhausted).status} == {"queued"}


def test_a_lost_routing_job_is_sent_to_the_routing_actor(migrated: str, redis_client: redis.Redis) -> None:
    # Given a routing job whose message Redis lost (no worker runs)
    outcome, _ = submit_route("Merhaba")
    _lose_messages(redis_client, "routing")
    assert _routing_message_job_ids(redis_client) == []
    # When the sweep runs past the limit
    assert sweep_lost_jobs(_past_the_limit()) == SweepCounts(stale=1, requeued=1, failed=0)
    # Then its message is back on the routing queue, not the inference one
    assert _routing_message_job_ids(redis_client) == [outcome.job_id]
    assert queued_message_job_ids() == set()


def _run_jobs(samples: list[Path], n: int) -> list[str]:
    ids = [submit_inference(samples[i % len(samples)].read_bytes(), DEMO).job_id for i in range(n)]
    wait_all(ids)
    return ids


def _route_log(job_id: str, created_at: datetime) -> RouteLog:
    return RouteLog(
        job_id=job_id,
        created_at=created_at,
        input_hash="0" * 64,
        score=1,
        complexity="simple",
        reason="score",
        decided_backend="local",
    )


def _verify() -> tuple[int, str]:
    result = runner.invoke(app, ["audit", "verify"])
    return result.exit_code, result.output


def _job_ids_left() -> set[str]:
    with Session(get_engine()) as session:
        return set(session.exec(select(Job.id)).all())


def _edit_confidence(row_id: int, value: float) -> None:
    with get_engine().begin() as conn:
        conn.execute(
            text("UPDATE pytorch_inference_logs SET confidence = :c WHERE id = :id"), {"c": value, "id": row_id}
        )


def test_the_purge_keeps_what_is_recent_and_the_chain_verifiable(worker: Any, samples: list[Path]) -> None:
    settings = get_settings()
    # Given three jobs run before a moment `mark`, two after it, an old leftover payload and a
    # route log on each side of `mark`
    old = _run_jobs(samples, 3)
    mark = utcnow()
    recent = _run_jobs(samples, 2)
    payloads.put(payloads.Payload(old[0], 1, None, "0" * 64, mark, b"left over"), ttl_s=3600)
    with session_scope() as session:
        session.add(_route_log("r-old", mark - timedelta(seconds=1)))
        session.add(_route_log("r-new", utcnow()))

    # When the jobs' retention has passed for the old ones only
    counts = purge_expired(mark + timedelta(days=settings.job_retention_days))
    # Then the old jobs, their payload and the old route log are gone, and no audit row
    assert counts == PurgeCounts(jobs=3, route_logs=1, audit_rows=0)
    assert _job_ids_left() == set(recent)
    assert payloads.fetch(old[0]) is None
    with Session(get_engine()) as session:
        assert session.exec(select(RouteLog.job_id)).all() == ["r-new"]

    # When the audit retention has passed for the old rows
    audit_now = mark + timedelta(days=settings.audit_retention_days)
    counts = purge_expired(audit_now)
    # Then exactly the rows written before `mark` are gone
    assert counts == PurgeCounts(jobs=2, route_logs=1, audit_rows=3)
    assert sorted(row.job_id for row in audit_rows()) == sorted(recent)
    # And the chain still verifies, from the purge's anchor
    code, output = _verify()
    assert code == 0, output
    assert "2 rows" in output
    # And a second purge changes nothing
    assert purge_expired(audit_now) == PurgeCounts(jobs=0, route_logs=0, audit_rows=0)
    # And an anchor moved by hand over deleted rows (to hide them) is refused: its HMAC is wrong
    with get_engine().begin() as conn:
        row = conn.execute(text("SELECT id, prev_hash FROM pytorch_inference_logs ORDER BY id DESC LIMIT 1")).one()
        saved = conn.execute(text("SELECT pruned_through_id, pruned_last_hash FROM audit_chain_head")).one()
        conn.execute(
            text("UPDATE audit_chain_head SET pruned_through_id = :id, pruned_last_hash = :h"),
            {"id": row.id - 1, "h": row.prev_hash},
        )
    code, output = _verify()
    assert code == 1 and "not genuine" in output
    with get_engine().begin() as conn:
        conn.execute(
            text("UPDATE audit_chain_head SET pruned_through_id = :id, pruned_last_hash = :h"),
            {"id": saved.pruned_through_id, "h": saved.pruned_last_hash},
        )
    assert _verify()[0] == 0

    # When a remaining row is edited, the chain names it
    first_kept = audit_rows()[0].id or 0
    _edit_confidence(first_kept, 0.5)
    code, output = _verify()
    assert code == 1 and f"row {first_kept}" in output
    # And when the first remaining row is deleted by hand, the walk does not start at the next one
    with get_engine().begin() as conn:
        conn.execute(text("DELETE FROM pytorch_inference_logs WHERE id = :id"), {"id": first_kept})
    code, output = _verify()
    assert code == 1 and f"row {first_kept} is missing" in output


def test_a_purge_keeps_an_edited_row_as_evidence(worker: Any, samples: list[Path]) -> None:
    # Given three audit rows, the second of them edited
    _run_jobs(samples, 3)
    rows = audit_rows()
    edited = rows[1].id or 0
    _edit_confidence(edited, 0.5)
    # When a purge would delete all of them
    counts = purge_expired(utcnow() + timedelta(days=get_settings().audit_retention_days + 1))
    # Then it deletes none, and the verification still names the edited row
    assert counts.audit_rows == 0
    with Session(get_engine()) as session:
        left = session.exec(select(PytorchInferenceLog.id).order_by(col(PytorchInferenceLog.id))).all()
    assert left == [row.id for row in rows]
    code, output = _verify()
    assert code == 1 and f"row {edited}" in output


def test_the_purge_keeps_only_recent_scheduler_claims_and_the_latest_of_each_task(migrated: str) -> None:
    from schema.tables import SchedulerClaim

    now = utcnow()
    old = now - timedelta(days=get_settings().job_retention_days + 1)
    with session_scope() as session:
        for task, period, at in [
            ("sweep", "old-1", old),
            ("sweep", "old-2", old),
            ("sweep", "new", now),
            ("nightly", "2020-01-01", old),
            ("nightly", "2020-01-02", old),  # the latest nightly claim, however old: kept
        ]:
            session.add(SchedulerClaim(task=task, period=period, claimed_at=at, claimed_by="test"))
    purge_expired(now)
    with Session(get_engine()) as session:
        left = sorted((c.task, c.period) for c in session.exec(select(SchedulerClaim)).all())
    assert left == [("nightly", "2020-01-02"), ("sweep", "new")]


def test_the_purge_deletes_route_logs_a_batch_at_a_time(migrated: str, monkeypatch: Any) -> None:
    import workers.sweep

    monkeypatch.setattr(workers.sweep, "PURGE_BATCH_ROWS", 2)
    mark = utcnow()
    with session_scope() as session:
        for i in range(5):
            session.add(_route_log(f"r-old-{i}", mark - timedelta(seconds=i + 1)))
        session.add(_route_log("r-new", mark + timedelta(seconds=1)))
    counts = purge_expired(mark + timedelta(days=get_settings().job_retention_days))
    assert counts.route_logs == 5
    with Session(get_engine()) as session:
        assert session.exec(select(RouteLog.job_id)).all() == ["r-new"]
