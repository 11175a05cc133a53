"""A/B tests: sticky keyed assignment, the statistics and their repeated-look correction (an A/A
simulation), tests that close with a winner, at their end or not at all, auto-promotion, real jobs
carrying their arm to the audit row, the scheduler task, and `onnxq abtest` / `/v1/abtests`."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from rich.console import Console
from sqlalchemy import insert
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from onnxq.cli import app as cli
from onnxq.errors import OnnxqError
from onnxq.settings import get_settings
from onnxq.split import variant_for
from producer.client import submit_inference
from scheduler import clock
from schema.abtests import create_test
from schema.audit import verify_chain
from schema.db import get_engine, session_scope
from schema.tables import Job, PytorchABTest, PytorchInferenceLog, PytorchModel, utcnow
from tests.helpers import DEMO, audit_rows, wait_all
from tests.test_scheduler import enqueued
from workers.abstats import (
    ALPHA,
    LOOK_ALPHA,
    ArmFigures,
    arm_figures,
    decide,
    student_t_two_sided_p,
    two_proportion_p,
    welch_p,
)
from workers.abtests import evaluate_all, show_test

runner = CliRunner()
KEY = b"test-audit-key-not-secret"
LABELS = ["COVID-19", "Pneumonia", "Normal"]


# --- Assignment and statistics (pure) ---------------------------------------------------------


def test_assignment_is_sticky_and_matches_the_split() -> None:
    users = [f"user-{i}" for i in range(5000)]
    arms = [variant_for(KEY, "t1", 30, u) for u in users]
    # Sticky: the same user lands on the same arm every time
    assert arms == [variant_for(KEY, "t1", 30, u) for u in users]
    # Over many users, B gets its 30% (3 standard deviations: ±0.02)
    assert abs(arms.count("B") / len(users) - 0.30) < 0.02
    # Another test (or another key) splits the same users independently
    other = [variant_for(KEY, "t2", 30, u) for u in users]
    assert 0.3 < sum(a == b for a, b in zip(arms, other, strict=True)) / len(users) < 0.8
    assert {variant_for(KEY, "t1", 1, u) for u in users[:50]} == {"A"}


def test_p_values_match_the_tables() -> None:
    # Reference values from scipy.stats (2 * t.sf(t, df)), which onnxq does not depend on
    assert student_t_two_sided_p(2.228, 10) == pytest.approx(0.05001177181711132, rel=1e-9)
    assert student_t_two_sided_p(3.5, 3.3) == pytest.approx(0.03394879738913091, rel=1e-9)
    assert student_t_two_sided_p(0.4, 120.5) == pytest.approx(0.6898647063007313, rel=1e-9)
    assert student_t_two_sided_p(1.96, 1e7) == pytest.approx(0.05, abs=1e-4)  # the normal limit
    assert student_t_two_sided_p(0.0, 5) == pytest.approx(1.0)
    # 60/100 against 75/100: pooled z = 2.2646
    assert two_proportion_p(60, 100, 75, 100) == pytest.approx(0.023540, abs=1e-6)
    assert two_proportion_p(100, 100, 50, 50) == 1.0
    # Welch: means 10 and 12, variances 4 and 9, 20 and 30 samples (t = 2.8284, df = 47.997)
    a = ArmFigures(20, 10.0, None, 4.0, 0, 0)
    b = ArmFigures(30, 12.0, None, 9.0, 0, 0)
    assert welch_p(a, b) == pytest.approx(0.006805843814148628, rel=1e-9)


def _simulate(rng: np.random.Generator, metric: str, looks: int, per_look: int, corrected: bool) -> bool:
    """One A/A test evaluated `looks` times as data arrive; True if it ever named a winner."""
    a_ms: list[float] = []
    b_ms: list[float] = []
    a_ok = b_ok = 0
    spent = 0
    for look in range(1, looks + 1):
        a_ms += list(rng.lognormal(3, 0.4, per_look))
        b_ms += list(rng.lognormal(3, 0.4, per_look))
        a_ok += int(rng.binomial(per_look, 0.8))
        b_ok += int(rng.binomial(per_look, 0.8))
        n = look * per_look
        a = arm_figures(a_ms, n, a_ok) if metric == "latency" else ArmFigures(n, None, None, None, n, a_ok)
        b = arm_figures(b_ms, n, b_ok) if metric == "latency" else ArmFigures(n, None, None, None, n, b_ok)
        if corrected:
            verdict = decide(
                metric,  # type: ignore[arg-type]
                a,
                b,
                min_samples=100,
                looks_done=spent,
                final="at its end" if look == looks else None,
            )
            spent = verdict.looks
            if verdict.close:
                return verdict.winner is not None
        elif n >= 100:
            p = two_proportion_p(a_ok, n, b_ok, n) if metric == "accuracy" else welch_p(a, b)
            if p is not None and p < ALPHA:
                return True
    return False


@pytest.mark.parametrize("metric", ["accuracy", "latency"])
def test_repeated_looks_at_an_aa_test_keep_the_false_positive_rate(metric: str) -> None:
    # Given 200 A/A tests, each evaluated 20 times as 50 samples per arm arrive
    rng = np.random.default_rng(7)
    tests, looks = 200, 20
    corrected = sum(_simulate(rng, metric, looks, 50, corrected=True) for _ in range(tests))
    naive = sum(_simulate(rng, metric, looks, 50, corrected=False) for _ in range(tests))
    # Then testing at 5% at every look names far more false winners than 5%...
    assert naive / tests > 2 * ALPHA
    # ...while the corrected looks stay at (below) the nominal rate
    assert corrected / tests <= 2 * ALPHA


# --- Tests on the database ----------------------------------------------------------------------


def _versions() -> tuple[int, int]:
    """The demo model's version 1, and a version 2 registered from the same file."""
    with session_scope() as session:
        v1 = session.exec(select(PytorchModel).where(col(PytorchModel.model_name) == DEMO)).one()
        data = v1.model_dump(exclude={"id"})
        v2 = PytorchModel(**{**data, "model_version": "2"})
        session.add(v2)
        session.flush()
        assert v1.id is not None and v2.id is not None
        return v1.id, v2.id


def _create(name: str = "t", **options: object) -> PytorchABTest:
    with session_scope() as session:
        return create_test(session, name, model_a=f"{DEMO}@1", model_b=f"{DEMO}@2", **options)  # type: ignore[arg-type]


def _arm_rows(test: PytorchABTest, variant: str, model_id: int, *, n: int, correct: float, ms: float) -> None:
    """`n` succeeded, labelled jobs of one arm and their audit rows, written straight in."""
    rng = random.Random(f"{variant}{n}{correct}")
    right = round(n * correct)
    now = utcnow()
    jobs, logs = [], []
    for i in range(n):
        job_id = uuid.uuid4().hex
        prediction = LABELS[0] if i < right else LABELS[1]
        jobs.append(
            {
                "id": job_id,
                "kind": "inference",
                "status": "succeeded",
                "model_id": model_id,
                "created_at": now,
                "finished_at": now,
                "attempts": 1,
                "result": {"prediction": prediction},
                "feedback_label": LABELS[0],
                "ab_test_id": test.id,
                "variant": variant,
            }
        )
        logs.append(
            {
                "model_id": model_id,
                "input_hash": "0" * 64,
                "inference_time_ms": max(0.1, rng.gauss(ms, ms / 10)),
                "confidence": 0.9,
                "result": {"prediction": prediction},
                "created_at": now,
                "job_id": job_id,
                "batch_size": 1,
                "variant": variant,
                "prev_hash": "0" * 64,
                "row_hash": "0" * 64,
            }
        )
    with get_engine().begin() as connection:
        connection.execute(insert(Job), jobs)
        connection.execute(insert(PytorchInferenceLog), logs)


def _row(name: str) -> PytorchABTest:
    with Session(get_engine()) as session:
        return session.exec(select(PytorchABTest).where(col(PytorchABTest.test_name) == name)).one()


def _status(model_id: int) -> str:
    with Session(get_engine()) as session:
        model = session.get(PytorchModel, model_id)
        assert model is not None
        return model.deployment_status


def test_a_clearly_better_b_closes_with_b_as_winner_and_is_promoted(migrated: str) -> None:
    v1, v2 = _versions()
    test = _create("better-b", min_samples=100, auto_promote=True)
    # Given 200 labelled jobs per arm: A right 60% of the time, B 95%
    _arm_rows(test, "A", v1, n=200, correct=0.60, ms=10)
    _arm_rows(test, "B", v2, n=200, correct=0.95, ms=10)
    # When the scheduler's evaluation runs
    assert evaluate_all(utcnow()) == ["better-b"]
    # Then B won, with its figures, p-value and reason stored, and B is the only active version
    row = _row("better-b")
    assert (row.status, row.winner_model_id, row.winner_arm) == ("closed", v2, "B")
    assert row.p_value is not None and row.p_value < LOOK_ALPHA
    assert row.figures is not None and row.figures["A"]["accuracy"] == 0.6 and row.figures["B"]["accuracy"] == 0.95
    assert row.figures["A"]["requests"] == 200 and row.model_a_avg_latency_ms is not None
    assert row.reason is not None and "B more accurate" in row.reason and "promoted" in row.reason
    assert (_status(v1), _status(v2)) == ("inactive", "active")
    assert show_test("better-b").verdict.startswith("closed: B more accurate")
    # A closed test is not evaluated again
    assert evaluate_all(utcnow()) == []


def test_a_faster_b_wins_a_latency_test_without_promotion(migrated: str) -> None:
    v1, v2 = _versions()
    test = _create("faster-b", metric="latency", min_samples=50)
    _arm_rows(test, "A", v1, n=60, correct=0.8, ms=20)
    _arm_rows(test, "B", v2, n=60, correct=0.8, ms=10)
    assert evaluate_all(utcnow()) == ["faster-b"]
    row = _row("faster-b")
    assert row.winner_model_id == v2 and row.reason is not None and "B faster" in row.reason
    assert (_status(v1), _status(v2)) == ("active", "active")  # no --auto-promote


def test_no_real_difference_does_not_close_early_but_closes_at_its_end(migrated: str) -> None:
    v1, v2 = _versions()
    ends = utcnow() + timedelta(days=1)
    test = _create("same", min_samples=100, ends_at=ends)
    # Given two arms equally accurate, evaluated again and again as data arrive
    for _ in range(4):
        _arm_rows(test, "A", v1, n=100, correct=0.8, ms=10)
        _arm_rows(test, "B", v2, n=100, correct=0.8, ms=10)
        for _ in range(3):
            assert evaluate_all(utcnow()) == []
    row = _row("same")
    assert row.status == "running" and row.looks == 3  # 100, 200, 400 per arm: three looks spent
    # When its end date passes, it closes without a winner
    assert evaluate_all(ends + timedelta(minutes=1)) == ["same"]
    row = _row("same")
    assert row.winner_model_id is None and row.reason is not None
    assert row.reason.startswith("no significant difference") and "closed at its end" in row.reason


def test_one_running_test_per_model_name(migrated: str) -> None:
    _versions()
    _create("first")
    with pytest.raises(Exception) as raised:
        _create("second")
    assert getattr(raised.value, "code", None) == "abtest_conflict"
    with pytest.raises(Exception) as raised:
        _create("first")
    assert getattr(raised.value, "code", None) == "abtest_conflict"


def test_real_jobs_are_split_and_carry_their_arm_to_the_audit_row(worker: object, samples: list[Path]) -> None:
    v1, v2 = _versions()
    test = _create("live", split_percent=50)
    data = samples[0].read_bytes()
    # Given jobs from 16 users, and one with an explicit version (never split)
    users = [f"user-{i}" for i in range(16)]
    ids = [submit_inference(data, DEMO, user_id=u).job_id for u in users]
    pinned = submit_inference(data, f"{DEMO}@1", user_id="pinned").job_id
    views = wait_all([*ids, pinned])
    assert all(v["status"] == "succeeded" for v in views.values())
    with Session(get_engine()) as session:
        jobs = {j.id: j for j in session.exec(select(Job).where(col(Job.id).in_([*ids, pinned])))}
    expected = {
        job_id: variant_for(get_settings().audit_key_bytes(), "live", 50, u)
        for job_id, u in zip(ids, users, strict=True)
    }
    # Then each job ran on its user's arm, recorded on the job, its result and its audit row
    for job_id, arm in expected.items():
        assert (jobs[job_id].ab_test_id, jobs[job_id].variant) == (test.id, arm)
        assert jobs[job_id].model_id == (v1 if arm == "A" else v2)
        assert views[job_id]["result"]["model_version"] == ("1" if arm == "A" else "2")
    assert set(expected.values()) == {"A", "B"}
    assert (jobs[pinned].ab_test_id, jobs[pinned].variant) == (None, None)
    rows = {row.job_id: row for row in audit_rows([*ids, pinned])}
    assert {job_id: rows[job_id].variant for job_id in ids} == expected
    assert rows[pinned].variant is None
    # And the chain, which now hashes the variant, still verifies
    with Session(get_engine()) as session:
        assert verify_chain(session, get_settings().audit_key_bytes()).ok
    # The evaluation sees the live figures
    live = show_test("live")
    assert live.arms["A"].requests + live.arms["B"].requests == 16
    assert live.verdict.startswith("running:")


def test_the_scheduler_enqueues_one_evaluation_per_period(migrated: str, redis_client: redis.Redis) -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert clock.abtests(now) is True
    assert clock.abtests(now + timedelta(seconds=30)) is False  # same period (300 s)
    assert clock.abtests(now + timedelta(seconds=300)) is True
    assert [actor for actor, _ in enqueued(redis_client)] == ["evaluate_abtests", "evaluate_abtests"]


def test_the_actor_closes_a_test_past_its_end(migrated: str) -> None:
    from workers.actors import evaluate_abtests

    _versions()
    # An end that has passed is refused when creating ...
    with pytest.raises(OnnxqError) as refused:
        _create("ended", ends_at=utcnow() - timedelta(seconds=1))
    assert refused.value.code == "validation_error" and "has passed" in refused.value.message
    # ... but reached by a running test, it closes the test
    _create("ended", ends_at=utcnow() + timedelta(hours=1))
    with session_scope() as session:
        row = session.exec(select(PytorchABTest).where(col(PytorchABTest.test_name) == "ended")).one()
        row.ends_at = utcnow() - timedelta(seconds=1)
    evaluate_abtests()  # the actor's function, called in process
    assert _row("ended").status == "closed"


# --- CLI and HTTP ---------------------------------------------------------------------------------


def test_cli_create_list_show_close(migrated: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import producer.abtest_cli

    monkeypatch.setattr(producer.abtest_cli, "out", Console(width=200))  # no wrapped columns
    _versions()
    created = runner.invoke(
        cli,
        ["abtest", "create", "cli-test", "--model-a", f"{DEMO}@1", "--model-b", f"{DEMO}@2", "--split", "20",
         "--metric", "latency", "--min-samples", "30", "--ends", "2099-01-01", "--auto-promote"],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    assert "80%" in created.output and "20%" in created.output
    listed = runner.invoke(cli, ["abtest", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    [entry] = json.loads(listed.output)
    assert (entry["name"], entry["metric"], entry["split_percent"], entry["auto_promote"]) == (
        "cli-test",
        "latency",
        20,
        True,
    )
    assert entry["ends_at"].startswith("2099-01-01")
    shown = runner.invoke(cli, ["abtest", "show", "cli-test"])
    assert shown.exit_code == 0, shown.output
    assert f"A: {DEMO}@1" in shown.output and "p95 inference ms" in shown.output and "running:" in shown.output
    closed = runner.invoke(cli, ["abtest", "close", "cli-test"])
    assert closed.exit_code == 0, closed.output
    assert "closed: no significant difference" in closed.output
    missing = runner.invoke(cli, ["abtest", "show", "nope"])
    assert missing.exit_code == 1 and "No A/B test is named 'nope'" in missing.output


def test_http_create_list_show_close(client: TestClient) -> None:
    _versions()
    body = {"name": "http-test", "model_a": f"{DEMO}@1", "model_b": f"{DEMO}@2", "split_percent": 10}
    created = client.post("/v1/abtests", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "running" and created.json()["arms"]["B"]["model"] == f"{DEMO}@2"
    again = client.post("/v1/abtests", json=body)
    assert again.status_code == 409 and again.json()["error"]["code"] == "abtest_conflict"
    assert [t["name"] for t in client.get("/v1/abtests").json()] == ["http-test"]
    shown = client.get("/v1/abtests/http-test").json()
    assert shown["split_percent"] == 10 and shown["verdict"].startswith("running:")
    closed = client.post("/v1/abtests/http-test/close").json()
    assert closed["status"] == "closed" and closed["winner"] is None
    missing = client.get("/v1/abtests/nope")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "abtest_not_found")
    assert client.get("/v1/abtests", headers={"Authorization": "Bearer wrong"}).status_code == 401
