"""`/v1/abtests`: create, list, show and close A/B tests (what `onnxq abtest` does)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from producer.web.auth import require_key
from producer.web.bodies import NO_NUL
from producer.web.errors import responses
from schema.abtests import ABTestView, create_test
from schema.db import session_scope
from workers.abtests import close_test, show_all, show_test

router = APIRouter(prefix="/v1/abtests", tags=["abtests"], dependencies=[Depends(require_key)])
NAME = Path(min_length=1, max_length=200, pattern=NO_NUL)


class ABTestCreate(BaseModel):
    """A new test: two versions of one model (`model_a`, `model_b`), or two router backends for
    the medium queries (`backend_a`, `backend_b`), and how to judge them."""

    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    model_a: str | None = Field(None, min_length=3, max_length=260, pattern=NO_NUL, description="NAME@VERSION")
    model_b: str | None = Field(None, min_length=3, max_length=260, pattern=NO_NUL, description="NAME@VERSION")
    backend_a: str | None = Field(None, min_length=1, max_length=100, pattern=NO_NUL, description="A router backend")
    backend_b: str | None = Field(None, min_length=1, max_length=100, pattern=NO_NUL, description="A router backend")
    split_percent: int = Field(50, ge=1, le=99, description="Percent of the jobs sent to B")
    metric: Literal["accuracy", "latency", "cost"] | None = Field(
        None, description="Models: accuracy (default) or latency; backends: latency (default) or cost"
    )
    min_samples: int = Field(100, ge=2, description="Per arm, before the test may close early")
    ends_at: datetime | None = Field(None, description="Close then, whatever the figures (UTC if no offset)")
    auto_promote: bool = False


@router.post("", status_code=201, responses=responses(400, 401, 403, 404, 408, 409, 413, 422, 429, 503))
def create_abtest(body: ABTestCreate) -> ABTestView:
    """Start splitting the jobs of a model name between two of its versions, or the router's
    medium queries between two backends."""
    with session_scope() as session:
        create_test(session, body.name, **body.model_dump(exclude={"name"}))
    return show_test(body.name)


@router.get("", responses=responses(401, 403, 429, 503))
def list_abtests() -> list[ABTestView]:
    """Every test, newest first, with the figures of its last evaluation."""
    return show_all()


@router.get("/{name}", responses=responses(401, 403, 404, 429, 503))
def read_abtest(name: str = NAME) -> ABTestView:
    """A test with per-arm figures (live while it runs) and a one-line verdict."""
    return show_test(name)


@router.post("/{name}/close", responses=responses(401, 403, 404, 408, 413, 429, 503))
def close_abtest(name: str = NAME) -> ABTestView:
    """Close a running test now, with a final look: a winner only if the difference is significant."""
    return close_test(name)
