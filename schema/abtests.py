"""A/B test rows: creating and reading tests, the running test of a model name or of the router
(cached for the producer), the samples each arm collected, and promoting a winner.

A model test splits the jobs of one model name between two of its versions; a routing test splits
the router's medium queries between two backends of the router config (instead of its
`medium_remote_percent`). Both are assigned, evaluated and closed the same way.

The statistics that decide when a test closes are in `workers/abstats.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from onnxq.errors import OnnxqError, PermanentError
from schema.db import get_engine
from schema.registry import resolve_model, split_ref
from schema.tables import (
    DeploymentStatus,
    Job,
    JobStatus,
    PytorchABTest,
    PytorchInferenceLog,
    PytorchModel,
    RouteLog,
    utcnow,
)

RUNNING = "running"
CLOSED = "closed"
MODEL = "model"
ROUTE = "route"
ROUTER = "router"  # what a routing test splits: the router's medium queries
METRICS = {MODEL: ("accuracy", "latency"), ROUTE: ("latency", "cost")}
ARMS = ("A", "B")


class ABTestNotFound(PermanentError):
    code = "abtest_not_found"


class ABTestConflict(PermanentError):
    code = "abtest_conflict"


@dataclass(frozen=True)
class RunningTest:
    """What the producer needs to split a model name's jobs (or the router's medium queries):
    the test and its two arms."""

    id: int
    name: str
    split_percent: int  # share of jobs sent to B
    arm_a: str  # name@version, or a backend name in a routing test
    arm_b: str


def create_test(
    session: Session,
    name: str,
    *,
    model_a: str | None = None,
    model_b: str | None = None,
    backend_a: str | None = None,
    backend_b: str | None = None,
    split_percent: int = 50,
    metric: str | None = None,
    min_samples: int = 100,
    ends_at: datetime | None = None,
    auto_promote: bool = False,
) -> PytorchABTest:
    """Start a test between two active versions of one model (`model_a`, `model_b`), or between
    two router backends for the medium queries (`backend_a`, `backend_b`); `abtest_conflict` if
    the name is taken or the model (or the router) already has a running test. The metric
    defaults to accuracy for models, latency for backends."""
    if not name.strip() or len(name) > 200 or "\x00" in name:
        raise OnnxqError("The test name must be 1–200 characters, without NUL.", code="validation_error")
    models, backends = (model_a, model_b), (backend_a, backend_b)
    if any(models) == any(backends) or None in (models if any(models) else backends):
        raise OnnxqError(
            "Give either two model versions (model_a, model_b) or two router backends (backend_a, backend_b).",
            code="validation_error",
        )
    kind = ROUTE if any(backends) else MODEL
    metric = metric or METRICS[kind][0]
    if metric not in METRICS[kind]:
        raise OnnxqError(
            f"A {kind} test's metric is one of {', '.join(METRICS[kind])}, not {metric!r}.", code="validation_error"
        )
    if not 1 <= split_percent <= 99:
        raise OnnxqError("split must be a percentage of jobs for B, from 1 to 99.", code="validation_error")
    if min_samples < 2:
        raise OnnxqError("min_samples must be at least 2 per arm.", code="validation_error")
    if ends_at is not None and ends_at.tzinfo is None:
        ends_at = ends_at.replace(tzinfo=UTC)
    if ends_at is not None and ends_at <= utcnow():
        raise OnnxqError(f"The end ({ends_at.isoformat()}) has passed: give a time to come.", code="validation_error")
    common: dict[str, Any] = {
        "test_name": name,
        "traffic_split_percent": split_percent,
        "metric": metric,
        "min_samples": min_samples,
        "ends_at": ends_at,
    }
    if kind == ROUTE:
        assert backend_a is not None and backend_b is not None
        return _create_route_test(session, backend_a, backend_b, auto_promote=auto_promote, **common)
    assert model_a is not None and model_b is not None
    for ref in (model_a, model_b):
        if split_ref(ref)[1] is None:
            raise OnnxqError(f"{ref!r}: give both arms as NAME@VERSION.", code="validation_error")
    a = resolve_model(session, model_a)
    b = resolve_model(session, model_b)
    if a.model_name != b.model_name or a.id == b.id:
        raise OnnxqError("The arms must be two versions of the same model.", code="validation_error")
    assert a.id is not None and b.id is not None
    test = PytorchABTest(model_a_id=a.id, model_b_id=b.id, model_name=a.model_name, auto_promote=auto_promote, **common)
    return _insert(session, test)


def _create_route_test(
    session: Session, backend_a: str, backend_b: str, *, auto_promote: bool, **common: Any
) -> PytorchABTest:
    from workers.routing.config import get_router_config  # the router config names the backends

    config = get_router_config()
    # A backend must be in a tier: its tier decides its fallbacks and how reports count it.
    in_tiers = [*config.routing.local, *config.routing.remote]
    for backend in (backend_a, backend_b):
        if backend not in in_tiers:
            known = ", ".join(in_tiers)
            raise OnnxqError(
                f"No backend named {backend!r} in the router config's tiers (routing.local, routing.remote: {known}).",
                code="validation_error",
            )
    if backend_a == backend_b:
        raise OnnxqError("The arms must be two different backends.", code="validation_error")
    if auto_promote:
        raise OnnxqError(
            "A routing test cannot promote its winner: act on its verdict in the router config.",
            code="validation_error",
        )
    test = PytorchABTest(kind=ROUTE, model_name=ROUTER, backend_a=backend_a, backend_b=backend_b, **common)
    return _insert(session, test)


def _insert(session: Session, test: PytorchABTest) -> PytorchABTest:
    name, subject = test.test_name, subject_of(test)
    if session.exec(select(PytorchABTest.id).where(col(PytorchABTest.test_name) == name)).first() is not None:
        raise ABTestConflict(f"An A/B test named {name!r} exists already; choose another name.")
    running = running_row(session, test.model_name, test.kind)
    if running is not None:
        raise ABTestConflict(f"{subject} is already in the running test {running.test_name!r}; close it first.")
    test.created_at = test.started_at = utcnow()
    session.add(test)
    try:
        session.flush()
    except IntegrityError:
        raise ABTestConflict(f"A test named {name!r}, or a running test of {subject}, exists.") from None
    clear_abtest_cache()
    return test


def subject_of(test: PytorchABTest) -> str:
    """What a test splits, in words."""
    return "the router's medium queries" if test.kind == ROUTE else repr(test.model_name)


def running_row(session: Session, model_name: str, kind: str = MODEL) -> PytorchABTest | None:
    return session.exec(
        select(PytorchABTest).where(
            col(PytorchABTest.kind) == kind,
            col(PytorchABTest.model_name) == model_name,
            col(PytorchABTest.status) == RUNNING,
        )
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


# The producer looks the running test of a model name (or of the router) up per job: cached
# like the registry, so a test created (or closed) elsewhere takes effect within this time.
ABTEST_CACHE_TTL_S = 5.0
_cache: dict[tuple[str, str], tuple[float, RunningTest | None]] = {}


def cached_running_test(model_name: str, kind: str = MODEL) -> RunningTest | None:
    """The running test of `model_name` (a routing test: `kind` ROUTE), if any (cached for
    `ABTEST_CACHE_TTL_S`)."""
    now = time.monotonic()
    hit = _cache.get((kind, model_name))
    if hit is not None and now - hit[0] < ABTEST_CACHE_TTL_S:
        return hit[1]
    with Session(get_engine()) as session:
        row = running_row(session, model_name, kind)
        found = None
        if row is not None and row.id is not None:
            a, b = arm_labels(session, row)
            found = RunningTest(row.id, row.test_name, row.traffic_split_percent, a, b)
    _cache[(kind, model_name)] = (now, found)
    return found


def arm_labels(session: Session, test: PytorchABTest) -> tuple[str, str]:
    """The arms' names: NAME@VERSION in a model test, the backends in a routing test."""
    if test.kind == ROUTE:
        return test.backend_a or "?", test.backend_b or "?"
    a, b = session.get(PytorchModel, test.model_a_id), session.get(PytorchModel, test.model_b_id)
    return (a.ref if a else "?"), (b.ref if b else "?")


def clear_abtest_cache() -> None:
    """Forget cached running tests (after a create or close here; tests switch databases)."""
    _cache.clear()


@dataclass
class ArmSample:
    """What one arm collected: its latencies, its labelled and correct job counts, and (routing
    tests) each request's cost."""

    latencies_ms: list[float]
    labelled: int = 0
    correct: int = 0
    costs: list[float] | None = None
    fallbacks: int = 0
    failed: int = 0


def arm_samples(session: Session, test: PytorchABTest) -> dict[str, ArmSample]:
    """Per arm of a model test: the audit rows' inference times, and the feedback labels against
    predictions; of a routing test: the latency and cost of each served query."""
    assert test.id is not None
    if test.kind == ROUTE:
        return _route_samples(session, test.id)
    test_id = test.id
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


def _route_samples(session: Session, test_id: int) -> dict[str, ArmSample]:
    """Each arm's ended queries, counted on the arm they were assigned to whatever happened next:
    the whole execution's time (a fallback's and a failure's wasted attempts included) and what
    was paid; how many fell back, and how many no backend could answer (they cost nothing, and
    count with the time they took to fail)."""
    samples = {arm: ArmSample([], costs=[]) for arm in ARMS}
    # Only the five columns used (sqlmodel's select is typed up to four).
    rows = session.execute(
        sa_select(
            col(Job.variant),
            col(RouteLog.total_ms),
            col(RouteLog.cost),
            col(RouteLog.fallback_used),
            col(RouteLog.served_by),
        )
        .join(RouteLog, col(RouteLog.job_id) == col(Job.id))
        .where(col(Job.ab_test_id) == test_id, col(RouteLog.total_ms).is_not(None))
    ).all()
    for variant, total_ms, cost, fallback_used, served_by in rows:
        sample = samples.get(variant or "")
        if sample is None or total_ms is None or sample.costs is None:
            continue
        sample.latencies_ms.append(total_ms)
        sample.costs.append(cost)
        sample.fallbacks += int(fallback_used and served_by is not None)
        sample.failed += int(served_by is None)
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

    model: str = Field(description="name@version, or the backend in a routing test")
    requests: int = 0
    mean_ms: float | None = Field(
        None,
        description="Mean inference time (the batch's session.run); in a routing test, the whole execution's",
    )
    p95_ms: float | None = None
    labelled: int = Field(0, description="Jobs with feedback")
    correct: int = 0
    accuracy: float | None = None
    mean_cost: float | None = Field(None, description="Mean cost per request (routing tests)")
    fallbacks: int = Field(0, description="Routing tests: queries another backend answered")
    failed: int = Field(0, description="Routing tests: queries no backend could answer")


class ABTestView(BaseModel):
    """An A/B test as users see it (CLI `--json`, HTTP)."""

    id: int = Field(description="What jobs and routing decisions name as their ab_test_id")
    name: str
    kind: str = Field(description="model (two versions of a model) or route (two router backends)")
    model: str = Field(description="What the test splits: the model name, or router")
    model_a: str = Field(description="Arm A: name@version, or the backend in a routing test")
    model_b: str = Field(description="Arm B: name@version, or the backend in a routing test")
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
    winner: str | None = Field(description="The winning arm's name@version (or backend), when there is one")
    reason: str | None
    arms: dict[str, ArmView]
    verdict: str = Field(description="One line: where the test stands")


def view(session: Session, test: PytorchABTest, figures: dict[str, dict[str, Any]], verdict: str) -> ABTestView:
    """The user-facing shape of `test`, with per-arm `figures` (stored or freshly computed)."""
    labels = dict(zip(ARMS, arm_labels(session, test), strict=True))
    assert test.id is not None
    return ABTestView(
        id=test.id,
        name=test.test_name,
        kind=test.kind,
        model=test.model_name,
        model_a=labels["A"],
        model_b=labels["B"],
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
        winner=labels.get(test.winner_arm or ""),
        reason=test.reason,
        arms={arm: ArmView(model=label, **figures.get(arm, {})) for arm, label in labels.items()},
        verdict=verdict,
    )
