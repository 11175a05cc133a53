"""Daily metrics: a day of real jobs summarised and upserted, percentiles equal on SQLite and
PostgreSQL, the `compute_daily_metrics` actor, `onnxq metrics` and `GET /v1/metrics/daily`."""

from __future__ import annotations

import json
import random
import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from sqlalchemy import insert
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from onnxq.cli import app as cli
from onnxq.errors import OnnxqError
from producer.client import record_feedback, submit_inference
from schema.db import get_engine, session_scope
from schema.metrics import compute_day, percentile_cont
from schema.tables import (
    Job,
    PytorchInferenceLog,
    PytorchModel,
    PytorchModelMetrics,
    RouteLog,
    RouteMetrics,
)
from tests.corpus import corpus
from tests.helpers import DEMO, audit_rows, wait_all

runner = CliRunner()


def yesterday() -> date:
    """Yesterday (UTC), when the test asks: a module constant would go stale across midnight."""
    return datetime.now(UTC).date() - timedelta(days=1)


# Ten succeeded jobs: inference 1..10 ms, end to end (k seconds + 1 µs), in shuffled order.
INFERENCE_MS = [float(k) for k in range(1, 11)]
TOTAL_MS = [1000.0 * k + 0.001 for k in range(1, 11)]


def _model_rows(day: date) -> list[dict[str, Any]]:
    with Session(get_engine()) as session:
        rows = session.exec(select(PytorchModelMetrics).where(col(PytorchModelMetrics.date) == day)).all()
        return [row.model_dump() for row in rows]


def _route_rows(day: date) -> dict[str, dict[str, Any]]:
    with Session(get_engine()) as session:
        rows = session.exec(select(RouteMetrics).where(col(RouteMetrics.date) == day)).all()
        return {row.backend: row.model_dump() for row in rows}


def _demo_id() -> int:
    with Session(get_engine()) as session:
        model_id = session.exec(select(PytorchModel.id).where(col(PytorchModel.model_name) == DEMO)).one()
    assert model_id is not None
    return model_id


def _job(model_id: int, status: str, finished_at: datetime, **fields: Any) -> Job:
    created_at = fields.pop("created_at", finished_at - timedelta(seconds=1))
    return Job(
        id=uuid.uuid4().hex,
        model_id=model_id,
        status=status,
        created_at=created_at,
        started_at=created_at,
        finished_at=finished_at,
        **fields,
    )


def _audit_row(job: Job, inference_ms: float, batch_size: int) -> dict[str, Any]:
    return {
        "model_id": job.model_id,
        "input_hash": "0" * 64,
        "inference_time_ms": inference_ms,
        "confidence": 0.9,
        "result": {"prediction": "Normal"},
        "created_at": job.finished_at,
        "job_id": job.id,
        "batch_size": batch_size,
        "prev_hash": "0" * 64,
        "row_hash": "0" * 64,
    }


def _route_log(backend: str | None, latency_ms: float | None, *, cost: float, fallback: bool, at: datetime) -> Any:
    return {
        "job_id": uuid.uuid4().hex,
        "created_at": at,
        "input_hash": "0" * 64,
        "score": 10,
        "complexity": "simple",
        "reason": "simple-query",
        "decided_backend": "chest-xray",
        "served_by": backend,
        "fallback_used": fallback,
        "cost": cost,
        "all_remote_cost": 0.01,
        "latency_ms": latency_ms,
    }


def _synthetic_day(day: date) -> None:
    """Jobs, audit rows and route logs with known figures, written straight into the tables."""
    model_id = _demo_id()
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    midnight = noon - timedelta(hours=12)
    order = list(range(10))
    random.Random(5).shuffle(order)  # inserted out of order: the percentiles must sort
    succeeded = []
    for position, k in enumerate(order):
        finished = noon + timedelta(minutes=position)
        created = finished - timedelta(microseconds=round(TOTAL_MS[k] * 1000))
        # The first four are labelled: three right, one wrong.
        label = None if position >= 4 else ("Normal" if position < 3 else "COVID-19")
        succeeded.append(
            _job(
                model_id,
                "succeeded",
                finished,
                created_at=created,
                result={"prediction": "Normal"},
                feedback_label=label,
            )
        )
    others = [
        # A failure at the day's first instant counts; one at the next day's first instant does not.
        _job(model_id, "failed", midnight, feedback_label="Normal"),
        _job(model_id, "failed", midnight + timedelta(days=1)),
        # Not ended, and a routing job: neither counts.
        _job(model_id, "running", noon),
        _job(model_id, "succeeded", noon, kind="route"),
    ]
    with session_scope() as session:
        session.add_all([*succeeded, *others])
        session.flush()
        audit = [
            _audit_row(job, INFERENCE_MS[k], batch_size=1 + k % 4) for job, k in zip(succeeded, order, strict=True)
        ]
        session.execute(insert(PytorchInferenceLog), audit)
        session.execute(
            insert(RouteLog),
            [
                _route_log("chest-xray", 30.0, cost=0.0, fallback=False, at=noon),
                _route_log("chest-xray", 10.0, cost=0.0, fallback=True, at=noon),
                _route_log("chest-xray", 20.0, cost=0.0, fallback=False, at=noon),
                _route_log("remote-llm", 500.0, cost=0.002, fallback=False, at=noon),
                _route_log(None, None, cost=0.0, fallback=True, at=noon),
                _route_log("remote-llm", 900.0, cost=0.002, fallback=False, at=midnight + timedelta(days=1)),
            ],
        )


# --- compute_day --------------------------------------------------------------------------------


def test_percentiles_and_counts_equal_hand_computed_values(migrated: str) -> None:
    # Given a day of known jobs, audit rows and route logs (on SQLite and on PostgreSQL)
    _synthetic_day(yesterday())
    # When the day is computed
    with session_scope() as session:
        assert compute_day(session, yesterday()) == (1, 3)
    # Then the model row holds the hand-computed figures (linear interpolation: 1..10 → p95 9.55)
    (row,) = _model_rows(yesterday())
    assert row["total_requests"] == 11 and row["failed_requests"] == 1
    assert (row["avg_inference_time_ms"], row["p50_inference_time_ms"]) == (5.5, 5.5)
    assert (row["p95_inference_time_ms"], row["p99_inference_time_ms"]) == (9.55, 9.91)
    assert (row["avg_total_ms"], row["p50_total_ms"]) == (5500.001, 5500.001)
    assert (row["p95_total_ms"], row["p99_total_ms"]) == (9550.001, 9910.001)
    assert row["mean_batch_size"] == sum(1 + k % 4 for k in range(10)) / 10
    # Feedback on a failed job is not a labelled prediction
    assert row["labelled_requests"] == 4 and row["accuracy"] == 0.75
    # And the routing backends, "" for the job no backend could serve
    routes = _route_rows(yesterday())
    assert set(routes) == {"chest-xray", "remote-llm", ""}
    local = routes["chest-xray"]
    assert (local["requests"], local["fallbacks"], local["cost"], local["all_remote_cost"]) == (3, 1, 0.0, 0.03)
    assert (local["avg_latency_ms"], local["p95_latency_ms"]) == (20.0, 29.0)
    assert (routes["remote-llm"]["requests"], routes["remote-llm"]["cost"], routes["remote-llm"]["p95_latency_ms"]) == (
        1,
        0.002,
        500.0,
    )
    assert (routes[""]["requests"], routes[""]["fallbacks"], routes[""]["avg_latency_ms"]) == (1, 1, None)


def test_a_rerun_changes_only_computed_at_and_an_empty_day_keeps_no_rows(migrated: str) -> None:
    _synthetic_day(yesterday())
    empty_day = yesterday() - timedelta(days=2)
    with session_scope() as session:
        compute_day(session, yesterday())
        # A row left over for a day that no longer has jobs (e.g. computed before a purge)
        session.add(PytorchModelMetrics(model_id=_demo_id(), date=empty_day, total_requests=5))
        session.add(RouteMetrics(backend="chest-xray", date=empty_day, requests=5))
    first, first_routes = _model_rows(yesterday()), _route_rows(yesterday())
    with session_scope() as session:
        assert compute_day(session, yesterday()) == (1, 3)
        assert compute_day(session, empty_day) == (0, 0)
    second, second_routes = _model_rows(yesterday()), _route_rows(yesterday())
    assert second[0]["computed_at"] >= first[0]["computed_at"]
    # The same rows (ids included), only computed_at moves
    unchanged = {"computed_at": None}
    assert [{**row, **unchanged} for row in second] == [{**row, **unchanged} for row in first]
    assert {k: {**v, **unchanged} for k, v in second_routes.items()} == {
        k: {**v, **unchanged} for k, v in first_routes.items()
    }
    assert _model_rows(empty_day) == [] and _route_rows(empty_day) == {}


def test_two_computations_of_a_day_at_once_take_turns(migrated: str) -> None:
    # Given the nightly computation of a day, its transaction still open
    _synthetic_day(yesterday())
    outcome: dict[str, object] = {}

    def by_hand() -> None:
        try:
            with session_scope() as session:
                outcome["rows"] = compute_day(session, yesterday())
        except Exception as exc:  # reported below
            outcome["error"] = exc

    with session_scope() as session:
        assert compute_day(session, yesterday()) == (1, 3)
        # When a second computation of the same day starts (by hand, or a redelivered message)
        second = threading.Thread(target=by_hand)
        second.start()
        second.join(0.5)
        # Then it waits for the first to commit ...
        assert second.is_alive() and not outcome
    second.join(30)
    # ... and then updates the first's rows instead of failing on the day's unique key
    assert outcome == {"rows": (1, 3)}
    assert len(_model_rows(yesterday())) == 1 and len(_route_rows(yesterday())) == 3


def test_a_day_the_purge_may_have_reached_is_refused_and_kept(migrated: str) -> None:
    # Given a stored row for a day older than the job retention (30 days by default)
    old_day = yesterday() - timedelta(days=40)
    with session_scope() as session:
        session.add(PytorchModelMetrics(model_id=_demo_id(), date=old_day, total_requests=5))
    # When it is recomputed, by the function and by hand
    with pytest.raises(OnnxqError) as caught, session_scope() as session:
        compute_day(session, old_day)
    assert caught.value.code == "metrics_day_purged"
    by_hand = runner.invoke(cli, ["metrics", "compute", "--date", old_day.isoformat()])
    assert by_hand.exit_code == 1 and "ONNXQ_JOB_RETENTION_DAYS (30)" in by_hand.stderr
    # Then its figures stay as they were
    assert [row["total_requests"] for row in _model_rows(old_day)] == [5]


def test_python_percentile_is_postgresql_percentile_cont(pg_server: str) -> None:
    # The SQLite path must give PostgreSQL's float bit for bit, not merely a close one.
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1) for _ in range(250)]
    quantiles = [0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]
    with psycopg.connect(pg_server) as conn:
        for size in (1, 2, 7, 100, len(values)):
            sample = values[:size]
            row = conn.execute(
                "SELECT percentile_cont(%s::float8[]) WITHIN GROUP (ORDER BY x) FROM unnest(%s::float8[]) AS x",
                (quantiles, sample),
            ).fetchone()
            assert row is not None
            expected = row[0]
            ours = [percentile_cont(sorted(sample), q) for q in quantiles]
            assert ours == expected, size
            # numpy's default is the same definition
            np.testing.assert_allclose(ours, np.percentile(sample, [100 * q for q in quantiles]), rtol=1e-12)


# --- real jobs through the worker and the actor ------------------------------------------------


def test_a_day_of_real_jobs_computed_by_the_actor(worker: object, samples: list[Path]) -> None:
    from workers.actors import compute_daily_metrics
    from workers.broker import MAINTENANCE_QUEUE, broker

    # Given real jobs: the samples twice, and an image that fails in the worker
    ids = [submit_inference(path.read_bytes(), DEMO, user_id="u1").job_id for path in samples * 2]
    failed_id = submit_inference(corpus()["truncated.jpg"][0], DEMO).job_id
    views = wait_all([*ids, failed_id])
    assert views[failed_id]["status"] == "failed"
    # And feedback: four right, two wrong, and one on the failed job (not a prediction)
    labels = ["COVID-19", "Pneumonia", "Normal"]
    for job_id in ids[:4]:
        record_feedback(job_id, views[job_id]["result"]["prediction"])
    for job_id in ids[4:6]:
        prediction = views[job_id]["result"]["prediction"]
        record_feedback(job_id, next(label for label in labels if label != prediction))
    record_feedback(failed_id, "Normal")
    # (A day boundary may fall between the jobs: expect only those that ended on the first one's day.)
    day = datetime.fromisoformat(views[ids[0]]["finished_at"]).astimezone(UTC).date()
    ended = [
        j for j in [*ids, failed_id] if datetime.fromisoformat(views[j]["finished_at"]).astimezone(UTC).date() == day
    ]
    succeeded = [j for j in ended if j != failed_id]
    # When the scheduler's message is handled by the worker
    compute_daily_metrics.send(day.isoformat())
    # (and one for a day past the retention, which is refused once, not retried: the join returns)
    compute_daily_metrics.send((day - timedelta(days=40)).isoformat())
    broker.join(MAINTENANCE_QUEUE, timeout=30_000)
    # Then the day's row matches the jobs, the audit rows and the feedback
    (row,) = _model_rows(day)
    assert row["total_requests"] == len(ended)
    assert row["failed_requests"] == int(failed_id in ended)
    labelled = [j for j in ids[:6] if j in succeeded]
    assert row["labelled_requests"] == len(labelled)
    assert row["accuracy"] == pytest.approx(len([j for j in ids[:4] if j in succeeded]) / len(labelled))
    audited = audit_rows(succeeded)
    inference = [r.inference_time_ms for r in audited]
    assert row["p95_inference_time_ms"] == pytest.approx(np.percentile(inference, 95), abs=1e-3)
    assert row["avg_inference_time_ms"] == pytest.approx(np.mean(inference), abs=1e-3)
    assert row["mean_batch_size"] == pytest.approx(np.mean([r.batch_size for r in audited]), abs=1e-3)
    totals = [views[j]["result"]["timings_ms"]["total"] for j in succeeded]
    assert row["p50_total_ms"] == pytest.approx(np.percentile(totals, 50), abs=1e-3)
    # And running it again changes nothing but computed_at
    with session_scope() as session:
        compute_day(session, day)
    (again,) = _model_rows(day)
    assert {**again, "computed_at": None} == {**row, "computed_at": None}


# --- onnxq metrics and GET /v1/metrics/daily ----------------------------------------------------


@pytest.fixture()
def computed(migrated: str) -> date:
    """Yesterday's synthetic day, computed."""
    _synthetic_day(yesterday())
    with session_scope() as session:
        compute_day(session, yesterday())
    return yesterday()


def test_the_metrics_command_prints_tables_and_json(computed: date, monkeypatch: pytest.MonkeyPatch) -> None:
    import producer.metrics_cli

    # Wide enough that rich does not elide the table's cells (CliRunner is not a terminal).
    monkeypatch.setattr(producer.metrics_cli, "out", Console(width=250))
    table = runner.invoke(cli, ["metrics"])
    assert table.exit_code == 0, table.output
    (line,) = [line for line in table.stdout.splitlines() if f"{DEMO}@1" in line]
    cells = [cell.strip() for cell in line.strip("│ ").split("│")]
    assert cells == [computed.isoformat(), f"{DEMO}@1", "11", "1", "5.50", "9.55", "9550.00", "2.3", "75.0% (4)"]
    assert any("chest-xray" in line and "29.00" in line for line in table.stdout.splitlines())

    as_json = runner.invoke(cli, ["metrics", "--model", f"{DEMO}@1", "--days", "3", "--json"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    (model,) = rows["models"]
    assert (model["date"], model["model"], model["p95_inference_time_ms"]) == (computed.isoformat(), DEMO, 9.55)
    assert {route["backend"] for route in rows["routes"]} == {"chest-xray", "remote-llm", ""}
    other = json.loads(runner.invoke(cli, ["metrics", "--model", "no-such-model", "--json"]).stdout)
    assert other["models"] == []


def test_metrics_compute_runs_a_day_by_hand(migrated: str) -> None:
    _synthetic_day(yesterday())
    default = runner.invoke(cli, ["metrics", "compute"])  # yesterday, UTC
    assert default.exit_code == 0, default.output
    assert default.stdout.strip() == f"{yesterday().isoformat()}: 1 model row(s), 3 routing backend row(s) written"
    assert _model_rows(yesterday())[0]["total_requests"] == 11
    bad = runner.invoke(cli, ["metrics", "compute", "--date", "2026-02-30"])
    assert bad.exit_code == 2 and "is not a date" in bad.output


def test_the_http_route_serves_the_same_rows(computed: date, client: TestClient) -> None:
    answer = client.get("/v1/metrics/daily", params={"model": DEMO, "days": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    (model,) = body["models"]
    assert model == json.loads(runner.invoke(cli, ["metrics", "--model", DEMO, "--json"]).stdout)["models"][0]
    assert (model["total_requests"], model["accuracy"], model["p99_total_ms"]) == (11, 0.75, 9910.001)
    assert {route["backend"]: route["requests"] for route in body["routes"]} == {
        "chest-xray": 3,
        "remote-llm": 1,
        "": 1,
    }
    # Given a row ten days old: outside the default week, inside ten days
    with session_scope() as session:
        session.add(PytorchModelMetrics(model_id=_demo_id(), date=computed - timedelta(days=9), total_requests=2))
    week = client.get("/v1/metrics/daily").json()["models"]
    assert [row["date"] for row in week] == [computed.isoformat()]
    ten_days = client.get("/v1/metrics/daily", params={"days": 10}).json()["models"]
    assert [row["total_requests"] for row in ten_days] == [11, 2]
    assert client.get("/v1/metrics/daily", params={"days": 0}).status_code == 422
    assert client.get("/v1/metrics/daily", headers={"Authorization": ""}).status_code == 401
