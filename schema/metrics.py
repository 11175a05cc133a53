"""Daily metrics: one UTC day of jobs summarised into `pytorch_model_metrics` (per model) and
`route_metrics` (per routing backend), and the rows read back for the CLI and HTTP.

A job belongs to the day it *ended* (`finished_at`), so a day's figures stop changing once its
jobs have ended; only late feedback (accuracy) moves them, hence the nightly recompute of the
last few days. Only inference jobs count here; routing jobs count per backend, by their route
log (written when the job ends).

Percentiles are PostgreSQL's `percentile_cont` (linear interpolation between the closest ranks):
in SQL on PostgreSQL, and in Python with the same arithmetic on SQLite, so both give the same
numbers on the same rows. Milliseconds are rounded to the microsecond, because the dialects sum
in different orders and an unrounded mean could differ in its last bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import groupby
from typing import Any

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import Float, SQLColumnExpression, and_, case, cast, extract, func, literal_column, text
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlmodel import Session, col, select

from onnxq.errors import PermanentError
from onnxq.settings import get_settings
from schema.registry import split_ref
from schema.tables import (
    TERMINAL_STATUSES,
    Job,
    JobStatus,
    PytorchInferenceLog,
    PytorchModel,
    PytorchModelMetrics,
    RouteLog,
    RouteMetrics,
    utcnow,
)

QUANTILES = (0.5, 0.95, 0.99)
MS_DIGITS = 3  # milliseconds to the microsecond
COST_DIGITS = 6


def percentile_cont(ordered: Sequence[float], q: float) -> float:
    """The `q` percentile of sorted values, with the arithmetic of PostgreSQL's percentile_cont
    (numpy's default definition; written out so the float is bit-for-bit PostgreSQL's)."""
    position = q * (len(ordered) - 1)
    low, high = ordered[math.floor(position)], ordered[math.ceil(position)]
    return low + (high - low) * (position - math.floor(position))


@dataclass(frozen=True)
class Summary:
    """Mean and percentiles of one measure over one group, in milliseconds."""

    mean: float
    p50: float
    p95: float
    p99: float


@dataclass(frozen=True)
class Measure:
    """A measured quantity in milliseconds: the SQL expression PostgreSQL aggregates, and the
    columns and function that give the same float in Python (for SQLite)."""

    sql: SQLColumnExpression[Any]
    columns: tuple[SQLColumnExpression[Any], ...]
    compute: Callable[..., float]


def _elapsed_ms(start: datetime, end: datetime) -> float:
    # Whole microseconds divided once, as PostgreSQL's exact numeric epoch cast to a double.
    return (end - start) // timedelta(microseconds=1) / 1000


INFERENCE_MS = Measure(col(PytorchInferenceLog.inference_time_ms), (col(PytorchInferenceLog.inference_time_ms),), float)
TOTAL_MS = Measure(
    cast(extract("epoch", col(Job.finished_at) - col(Job.created_at)) * 1000, Float),
    (col(Job.created_at), col(Job.finished_at)),
    _elapsed_ms,
)
LATENCY_MS = Measure(col(RouteLog.latency_ms), (col(RouteLog.latency_ms),), float)
# A literal, not a bound parameter: PostgreSQL must see the same expression in GROUP BY.
BACKEND = func.coalesce(col(RouteLog.served_by), literal_column("''"))


def _ms(value: float) -> float:
    return round(value, MS_DIGITS)


def ordered_mean(values: list[float]) -> float:
    """The mean as PostgreSQL's `avg(x ORDER BY x)` computes it: a plain left-to-right sum of the
    sorted values (not `math.fsum`, not 3.12's compensated `sum`), then one division."""
    total = 0.0
    for value in values:
        total += value
    return total / len(values)


def summaries(session: Session, key: SQLColumnExpression[Any], measure: Measure, *where: Any) -> dict[Any, Summary]:
    """Mean, p50, p95 and p99 of `measure` per value of `key`, over the rows `where` selects."""
    if session.get_bind().dialect.name == "postgresql":
        query = (
            sa_select(
                key,
                # Summed in ascending order, as on SQLite below: float addition depends on order.
                func.avg(aggregate_order_by(measure.sql, measure.sql)),
                *(func.percentile_cont(q).within_group(measure.sql) for q in QUANTILES),
            )
            .where(*where)
            .group_by(key)
        )
        return {row[0]: Summary(*(_ms(float(value)) for value in row[1:])) for row in session.execute(query).all()}
    rows = session.execute(sa_select(key, *measure.columns).where(*where).order_by(key)).all()
    result = {}
    for group, members in groupby(rows, key=lambda row: row[0]):
        values = sorted(measure.compute(*row[1:]) for row in members)
        result[group] = Summary(_ms(ordered_mean(values)), *(_ms(percentile_cont(values, q)) for q in QUANTILES))
    return result


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC instants a day starts and ends (exclusive)."""
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


def compute_day(session: Session, day: date) -> tuple[int, int]:
    """Summarise one UTC day into the metrics tables, in the caller's transaction.

    An upsert: rows of that day are updated in place (a rerun changes only `computed_at`), and
    a model or backend with no jobs that day has no row (a stale one is deleted). Returns how
    many model rows and backend rows the day has. A day the purge may have reached is refused
    (`metrics_day_purged`): recomputing it from what is left would shrink its stored figures.
    """
    now = utcnow()
    retention_days = get_settings().job_retention_days
    if day_bounds(day)[0] < now - timedelta(days=retention_days):
        raise PermanentError(
            f"{day.isoformat()} is older than ONNXQ_JOB_RETENTION_DAYS ({retention_days}): its jobs may have "
            "been purged, so its stored metrics are kept as they are.",
            code="metrics_day_purged",
        )
    _one_at_a_time(session, day)
    models = _model_rows(session, day)
    backends = _route_rows(session, day)
    _upsert(session, PytorchModelMetrics, "model_id", day, models, now)
    _upsert(session, RouteMetrics, "backend", day, backends, now)
    return len(models), len(backends)


# pg_advisory_xact_lock keys: this base plus the day's ordinal (a range no other lock of onnxq uses).
DAY_LOCK_BASE = 0x6F6E7871_00000000


def _one_at_a_time(session: Session, day: date) -> None:
    """Let one computation of `day` run at a time (the nightly one and a hand-run one, or a
    redelivered message): two at once would both insert the day's rows, and one would fail on
    the unique key. The lock lasts until the caller's transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DAY_LOCK_BASE + day.toordinal()})
    else:
        # SQLite: a write as the transaction's first statement takes the database's write lock
        # now, so a second computation waits for the first to commit and then reads its rows.
        session.execute(text("UPDATE pytorch_model_metrics SET id = id WHERE 1 = 0"))


def _model_rows(session: Session, day: date) -> dict[Any, dict[str, Any]]:
    start, end = day_bounds(day)
    ended = (
        col(Job.kind) == "inference",
        col(Job.model_id).is_not(None),
        col(Job.status).in_(TERMINAL_STATUSES),
        col(Job.finished_at) >= start,
        col(Job.finished_at) < end,
    )
    succeeded = (*ended, col(Job.status) == JobStatus.SUCCEEDED.value)
    labelled = and_(col(Job.status) == JobStatus.SUCCEEDED.value, col(Job.feedback_label).is_not(None))
    prediction = col(Job.result)["prediction"].as_string()
    counts = sa_select(
        col(Job.model_id),
        func.count(),
        func.sum(case((col(Job.status) == JobStatus.FAILED.value, 1), else_=0)),
        func.sum(case((labelled, 1), else_=0)),
        func.sum(case((and_(labelled, prediction == col(Job.feedback_label)), 1), else_=0)),
    )
    audited = (*succeeded, col(PytorchInferenceLog.job_id) == col(Job.id))
    batch_sizes = dict(
        session.execute(
            sa_select(col(Job.model_id), func.avg(col(PytorchInferenceLog.batch_size)))
            .where(*audited)
            .group_by(col(Job.model_id))
        ).all()
    )
    inference = summaries(session, col(Job.model_id), INFERENCE_MS, *audited)
    total = summaries(session, col(Job.model_id), TOTAL_MS, *succeeded)
    rows = {}
    for model_id, requests, failed, n_labelled, correct in session.execute(
        counts.where(*ended).group_by(col(Job.model_id))
    ).all():
        row: dict[str, Any] = {
            "total_requests": int(requests),
            "failed_requests": int(failed or 0),
            "labelled_requests": int(n_labelled or 0),
            "accuracy": int(correct or 0) / int(n_labelled) if n_labelled else None,
            "mean_batch_size": _ms(float(batch_sizes[model_id])) if model_id in batch_sizes else None,
        }
        row.update(_summary_columns("inference_time_ms", inference.get(model_id)))
        row.update(_summary_columns("total_ms", total.get(model_id)))
        rows[model_id] = row
    return rows


def _summary_columns(measure: str, summary: Summary | None) -> dict[str, float | None]:
    """The avg/p50/p95/p99 columns of `measure` (NULL without a summary)."""
    figures = {"avg": summary.mean, "p50": summary.p50, "p95": summary.p95, "p99": summary.p99} if summary else {}
    return {f"{stat}_{measure}": figures.get(stat) for stat in ("avg", "p50", "p95", "p99")}


def _route_rows(session: Session, day: date) -> dict[Any, dict[str, Any]]:
    start, end = day_bounds(day)
    that_day = (col(RouteLog.created_at) >= start, col(RouteLog.created_at) < end)
    latency = summaries(session, BACKEND, LATENCY_MS, *that_day, col(RouteLog.latency_ms).is_not(None))
    query = (
        sa_select(
            BACKEND,
            func.count(),
            func.sum(case((col(RouteLog.fallback_used), 1), else_=0)),
            func.sum(col(RouteLog.cost)),
            func.sum(col(RouteLog.all_remote_cost)),
        )
        .where(*that_day)
        .group_by(BACKEND)
    )
    rows = {}
    for backend, requests, fallbacks, cost, remote in session.execute(query).all():
        times = latency.get(backend)
        rows[backend] = {
            "requests": int(requests),
            "fallbacks": int(fallbacks or 0),
            "cost": round(float(cost or 0), COST_DIGITS),
            "all_remote_cost": round(float(remote or 0), COST_DIGITS),
            "avg_latency_ms": times.mean if times else None,
            "p95_latency_ms": times.p95 if times else None,
        }
    return rows


def _upsert(
    session: Session,
    table: type[PytorchModelMetrics] | type[RouteMetrics],
    key: str,
    day: date,
    rows: dict[Any, dict[str, Any]],
    now: datetime,
) -> None:
    """Make the day's rows of `table` exactly `rows` (by `key`), keeping the ids of rows that stay."""
    existing = {getattr(row, key): row for row in session.exec(select(table).where(col(table.date) == day)).all()}
    for stale in existing.keys() - rows.keys():
        session.delete(existing[stale])
    for value, fields in rows.items():
        row = existing.get(value) or table(**{key: value, "date": day})
        for name, figure in {**fields, "computed_at": now}.items():
            setattr(row, name, figure)
        session.add(row)
    session.flush()


class DayRow(BaseModel):
    """What every daily row carries: its UTC day and when it was computed."""

    date: date
    computed_at: datetime | None

    @field_validator("computed_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # SQLite returns naive datetimes; every stored time is UTC.
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class ModelDay(DayRow):
    """One model version's inference jobs that ended on one UTC day."""

    model: str
    model_version: str
    total_requests: int = Field(description="Inference jobs that ended that day (succeeded + failed)")
    failed_requests: int
    avg_inference_time_ms: float | None = Field(description="The batch's model run, per job; null: none succeeded")
    p50_inference_time_ms: float | None
    p95_inference_time_ms: float | None
    p99_inference_time_ms: float | None
    avg_total_ms: float | None = Field(description="Accepted to result committed, over succeeded jobs")
    p50_total_ms: float | None
    p95_total_ms: float | None
    p99_total_ms: float | None
    mean_batch_size: float | None
    labelled_requests: int = Field(description="Succeeded jobs with feedback")
    accuracy: float | None = Field(description="Share of labelled jobs predicted right; null when none is labelled")


class RouteDay(DayRow):
    """One routing backend's jobs that ended on one UTC day."""

    backend: str = Field(description='The backend that served; "" for jobs no backend could serve')
    requests: int
    fallbacks: int
    cost: float
    all_remote_cost: float = Field(description="What the same queries would have cost on the remote tier")
    avg_latency_ms: float | None
    p95_latency_ms: float | None


class DailyMetrics(BaseModel):
    """Daily rows, newest day first: what `onnxq metrics` prints and `GET /v1/metrics/daily` serves."""

    models: list[ModelDay]
    routes: list[RouteDay]


def daily_metrics(session: Session, *, model: str | None, days: int, today: date) -> DailyMetrics:
    """The stored rows of the last `days` days before `today` (and today's, if computed), newest
    first: per model (`model`: NAME or NAME@VERSION, else every model) and per routing backend."""
    since = today - timedelta(days=days)
    query = (
        select(PytorchModelMetrics, PytorchModel)
        .where(col(PytorchModelMetrics.model_id) == col(PytorchModel.id))
        .where(col(PytorchModelMetrics.date) >= since)
        .order_by(col(PytorchModelMetrics.date).desc(), col(PytorchModel.model_name), col(PytorchModel.id))
    )
    if model is not None:
        name, version = split_ref(model)
        query = query.where(col(PytorchModel.model_name) == name)
        if version is not None:
            query = query.where(col(PytorchModel.model_version) == version)
    models = [
        ModelDay(
            model=ref.model_name, model_version=ref.model_version, **metrics.model_dump(exclude={"id", "model_id"})
        )
        for metrics, ref in session.exec(query).all()
    ]
    routes = session.exec(
        select(RouteMetrics)
        .where(col(RouteMetrics.date) >= since)
        .order_by(col(RouteMetrics.date).desc(), col(RouteMetrics.backend))
    ).all()
    return DailyMetrics(models=models, routes=[RouteDay.model_validate(row.model_dump()) for row in routes])
