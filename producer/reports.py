"""Reports over what ran: the router's cost report (what routing saved against sending every
query to the remote tier), from the route logs of finished jobs."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session

from onnxq.errors import OnnxqError
from schema.db import get_engine
from schema.routes import cost_rows, first_and_last

DAYS_PER_MONTH = 30  # the seed's arithmetic: a month is 30 days, a year 12 such months
MONTHS_PER_YEAR = 12


def parse_since(text: str | None) -> datetime | None:
    """YYYY-MM-DD (UTC midnight) or an ISO timestamp (UTC unless it says otherwise); None for
    all time. `validation_error` otherwise."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise OnnxqError(
            f"since: {text!r} is not a date (YYYY-MM-DD) or ISO timestamp.", code="validation_error"
        ) from None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def cost_report(since: datetime | None = None, *, api_key_name: str | None = None) -> dict[str, Any]:
    """Requests and cost per backend that served, the all-remote baseline, the savings, and the
    seed's daily / monthly / yearly projection at the observed daily volume. With
    `api_key_name`, only that key's jobs."""
    with Session(get_engine()) as session:
        rows = cost_rows(session, since, api_key_name)
        first, last = first_and_last(session, since, api_key_name)
    requests = sum(row["requests"] for row in rows)
    cost = sum(row["cost"] for row in rows)
    baseline = sum(row["all_remote_cost"] for row in rows)
    savings = baseline - cost
    # Whole days observed (the asked-for window up to now, else first to last job), at least one:
    # a few minutes of traffic projects as one day's worth.
    start, end = (since, datetime.now(UTC)) if since is not None else (first, last)
    days = max(1, math.ceil((end - start) / timedelta(days=1))) if start and end else 1
    daily = {"requests": requests / days, "cost": cost / days, "all_remote_cost": baseline / days}
    daily["savings"] = daily["all_remote_cost"] - daily["cost"]
    monthly = {key: value * DAYS_PER_MONTH for key, value in daily.items()}
    yearly = {key: value * MONTHS_PER_YEAR for key, value in monthly.items()}
    return {
        "since": since.isoformat() if since else None,
        "first": first.isoformat() if first else None,
        "last": last.isoformat() if last else None,
        "days": days,
        "requests": requests,
        "by_backend": sorted(rows, key=lambda row: (row["backend"] is None, row["backend"] or "")),
        "cost": round(cost, 6),
        "all_remote_cost": round(baseline, 6),
        "savings": round(savings, 6),
        "savings_percent": round(100 * savings / baseline, 2) if baseline else 0.0,
        "projection": {
            name: {key: round(value, 4) for key, value in period.items()}
            for name, period in (("daily", daily), ("monthly", monthly), ("yearly", yearly))
        },
    }
