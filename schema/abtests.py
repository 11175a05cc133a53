"""A/B test rows: creating and reading tests, the running test of a model name (cached for the
producer), the samples each arm collected, and closing a test (promoting its winner).

The statistics that decide when a test closes are in `workers/abstats.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from onnxq.errors import OnnxqError, PermanentError
from schema.db import get_engine
from schema.registry import resolve_model, split_ref
from schema.tables import DeploymentStatus, Job, JobStatus, PytorchABTest, PytorchInferenceLog, PytorchModel, utcnow

RUNNING = "running"
CLOSED = "closed"
METRICS = ("accuracy", "latency")
ARMS = ("A", "B")


class ABTestNotFound(PermanentError):
    code = "abtest_not_found"


class ABTestConflict(PermanentError):
    code = "abtest_conflict"


@dataclass(frozen=True)
class RunningTest:
    """What the producer needs to split a model name's jobs: the test and its two versions."""

    id: int
    name: str
    split_percent: int  # share of jobs sent to B
    model_a: str  # name@version
    model_b: str


def create_test(
    session: Session,
    name: str,
    *,
    model_a: str,
    model_b: str,
    split_percent: int = 50,
    metric: str = "accuracy",
    min_samples: int = 100,
    ends_at: datetime | None = None,
    auto_promote: bool = False,
) -> PytorchABTest:
    """Start a test between two active versions of one model; `abtest_conflict` if the name is
    taken or the model already has a running test."""
    if not name.strip() or len(name) > 200 or "\x00" in name:
        raise OnnxqError("The test name must be 1–200 characters, without NUL.", code="validation_error")
    if metric not in METRICS:
        raise OnnxqError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}.", code="validation_error")
    if not 1 <= split_percent <= 99:
        raise OnnxqError("split must be a percentage of jobs for B, from 1 to 99.", code="validation_error")
    if min_samples < 2:
        raise OnnxqError("min_samples must be at least 2 per arm.", code="validation_error")
    if ends_at is not None and ends_at.tzinfo is None:
        ends_at = ends_at.replace(tzinfo=UTC)
    for ref in (model_a, model_b):
        if split_ref(ref)[1] is None:
            raise OnnxqError(f"{ref!r}: give both arms as NAME@VERSION.", code="validation_error")
    a = resolve_model(session, model_a)
    b = resolve_model(session, model_b)
    if a.model_name != b.model_name or a.id == b.id:
        raise OnnxqError("The arms must be two versions of the same model.", code="validation_error")
    if session.exec(select(PytorchABTest.id).where(col(PytorchABTest.test_name) == name)).first() is not None:
        raise ABTestConflict(f"An A/B test named {name!r} exists already; choose another name.")
    running = running_row(session, a.model_name)
    if running is not None:
        raise ABTestConflict(f"{a.model_name!r} is already in the running test {running.test_name!r}; close it first.")
    assert a.id is not None and b.id is not None
    now = utcnow()
    test = PytorchABTest(
        test_name=name,
        model_a_id=a.id,
        model_b_id=b.id,
        traffic_split_percent=split_percent,
        model_name=a.model_name,
        metric=metric,
        min_samples=min_samples,
        ends_at=ends_at,
        auto_promote=auto_promote,
        created_at=now,
        started_at=now,
    )
    session.add(test)
    try:
        session.flush()
    except IntegrityError:
        raise ABTestConflict(f"A test named {name!r}, or a running test of {a.model_name!r}, exists.") from None
    clear_abtest_cache()
    return test


def running_row(session: Session, model_name: str) -> PytorchABTest | None:
    return session.exec(
        select(PytorchABTest).where(col(PytorchABTest.model_name) == model_name, col(PytorchABTest.status) == RUNNING)
    ).first()


def get_test(session: Session, name: str, *, lock: bool = False) -> PytorchABTest:
    query = select(PytorchABTest).where(col(PytorchABTest.test_name) == name)
    test = session.exec(query.with_for_update() if lock else query).first()
    if test is None:
        raise ABTestNotFound(f"No A/B test is named {name!r}; `onnxq abtest list` shows them.")
    return test


def list_tests(session: Session) -> list[PytorchABTest]:
    """Every test, newest first."""
    return list(session.exec(select(PytorchABTest).order_by(col(PytorchABTest.id).desc())).all())


def running_ids(session: Session) -> list[int]:
    rows = session.exec(select(PytorchABTest.id).where(col(PytorchABTest.status) == RUNNING)).all()
    return [row for row in rows if row is not None]


# The producer looks the running test of a model name up per job: cached like the registry, so
# a test created (or closed) elsewhere takes effect within this time.
ABTEST_CACHE_TTL_S = 5.0
_cache: dict[str, tuple[float, RunningTest | None]] = {}


def cached_running_test(model_name: str) -> RunningTest | None:
    """The running test of `model_name`, if any (cached for `ABTEST_CACHE_TTL_S`)."""
    now = time.monotonic()
    hit = _cache.get(model_name)
    if hit is not None and now - hit[0] < ABTEST_CACHE_TTL_S:
        return hit[1]
    with Session(get_engine()) as session:
        row = running_row(session, model_name)
        found = None
        if row is not None and row.id is not None:
            a, b = session.get(PytorchModel, row.model_a_id), session.get(PytorchModel, row.model_b_id)
            assert a is not None and b is not None
            found = RunningTest(row.id, row.test_name, row.traffic_split_percent, a.ref, b.ref)
    _cache[model_name] = (now, found)
    return found


def clear_abtest_cache() -> None:
    """Forget cached running tests (after a create or close here; tests switch databases)."""
    _cache.clear()


@dataclass
class ArmSample:
    """What one arm collected: its inference times and its labelled and correct job counts."""

    latencies_ms: list[float]
    labelled: int = 0
    correct: int = 0


def arm_samples(session: Session, test_id: int) -> dict[str, ArmSample]:
    """Per arm: the audit rows' inference times, and the feedback labels against predictions."""
    samples = {arm: ArmSample([]) for arm in ARMS}
    timed = session.exec(
        select(Job.variant, PytorchInferenceLog.inference_time_ms)
        .join(PytorchInferenceLog, col(PytorchInferenceLog.job_id) == col(Job.id))
        .where(col(Job.ab_test_id) == test_id)
    ).all()
    for variant, ms in timed:
        if variant in samples:
            samples[variant].latencies_ms.append(ms)
    labelled = session.exec(
        select(Job.variant, Job.feedback_label, Job.result).where(
            col(Job.ab_test_id) == test_id,
            col(Job.status) == JobStatus.SUCCEEDED.value,
            col(Job.feedback_label).is_not(None),
        )
    ).all()
    for variant, label, result in labelled:
        if variant in samples:
            samples[variant].labelled += 1
            samples[variant].correct += int((result or {}).get("prediction") == label)
    return samples


def promote(session: Session, model_id: int) -> PytorchModel:
    """Make `model_id` the only active version of its model name."""
    winner = session.get(PytorchModel, model_id)
    assert winner is not None
    for row in session.exec(select(PytorchModel).where(col(PytorchModel.model_name) == winner.model_name)).all():
        status = DeploymentStatus.ACTIVE if row.id == model_id else DeploymentStatus.INACTIVE
        if row.deployment_status != status:
            row.deployment_status = status.value
            row.updated_at = utcnow()
            session.add(row)
    return winner


class ArmView(BaseModel):
    """One arm of a test, as `show` prints it."""

    model: str = Field(description="name@version")
    requests: int = 0
    mean_ms: float | None = Field(None, description="Mean inference time (the batch's session.run)")
    p95_ms: float | None = None
    labelled: int = Field(0, description="Jobs with feedback")
    correct: int = 0
    accuracy: float | None = None


class ABTestView(BaseModel):
    """An A/B test as users see it (CLI `--json`, HTTP)."""

    name: str
    model: str
    model_a: str
    model_b: str
    split_percent: int = Field(description="Share of jobs sent to B")
    metric: str
    min_samples: int
    ends_at: datetime | None
    auto_promote: bool
    status: str
    started_at: datetime
    closed_at: datetime | None
    evaluated_at: datetime | None
    looks: int
    p_value: float | None
    winner: str | None = Field(description="The winning arm's name@version, when there is one")
    reason: str | None
    arms: dict[str, ArmView]
    verdict: str = Field(description="One line: where the test stands")


def view(session: Session, test: PytorchABTest, figures: dict[str, dict[str, Any]], verdict: str) -> ABTestView:
    """The user-facing shape of `test`, with per-arm `figures` (stored or freshly computed)."""
    refs = {"A": session.get(PytorchModel, test.model_a_id), "B": session.get(PytorchModel, test.model_b_id)}
    winner = session.get(PytorchModel, test.winner_model_id) if test.winner_model_id is not None else None
    return ABTestView(
        name=test.test_name,
        model=test.model_name,
        model_a=refs["A"].ref if refs["A"] else "?",
        model_b=refs["B"].ref if refs["B"] else "?",
        split_percent=test.traffic_split_percent,
        metric=test.metric,
        min_samples=test.min_samples,
        ends_at=test.ends_at,
        auto_promote=test.auto_promote,
        status=test.status,
        started_at=test.started_at,
        closed_at=test.closed_at,
        evaluated_at=test.evaluated_at,
        looks=test.looks,
        p_value=test.p_value,
        winner=winner.ref if winner else None,
        reason=test.reason,
        arms={arm: ArmView(model=model.ref if model else "?", **figures.get(arm, {})) for arm, model in refs.items()},
        verdict=verdict,
    )
