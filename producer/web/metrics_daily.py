"""`GET /v1/metrics/daily`: the computed daily metrics, the rows `onnxq metrics` prints."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session

from producer.web.auth import require_key
from producer.web.bodies import NO_NUL
from producer.web.errors import responses
from schema.db import get_engine
from schema.metrics import DailyMetrics, daily_metrics

router = APIRouter(tags=["metrics"])
MAX_DAYS = 366


@router.get("/v1/metrics/daily", dependencies=[Depends(require_key)], responses=responses(401, 403, 404, 422, 429, 503))
def read_daily_metrics(
    model: str | None = Query(None, min_length=1, max_length=200, pattern=NO_NUL, description="NAME or NAME@VERSION"),
    days: int = Query(7, ge=1, le=MAX_DAYS, description="Days back from today (UTC); today's row too if computed"),
) -> DailyMetrics:
    """Per model and per routing backend, the metrics the nightly job computed for recent days."""
    with Session(get_engine()) as session:
        return daily_metrics(session, model=model, days=days, today=datetime.now(UTC).date())
