"""The router over HTTP: routing jobs (`POST /v1/jobs/route`) and decisions alone
(`POST /v1/route/decide`)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from onnxq.settings import get_settings
from producer.reports import cost_report, parse_since
from producer.route import decide_route, submit_route
from producer.web.auth import Caller, require_key
from producer.web.bodies import JSON_OVERHEAD_BYTES, NO_NUL, base64_length, decode_image, openapi_schema, parse_json
from producer.web.errors import responses
from producer.web.jobs import LOCATION

router = APIRouter(tags=["router"])


class DecideRequest(BaseModel):
    query: str = Field(
        min_length=1, pattern=NO_NUL, description="The query text, at most ONNXQ_MAX_QUERY_CHARS (never stored)"
    )
    user_id: str | None = Field(default=None, max_length=200, pattern=NO_NUL, description="Keeps the A/B split sticky")
    backend: str | None = Field(default=None, max_length=100, pattern=NO_NUL, description="Force this backend")


class RuleFired(BaseModel):
    rule: str = Field(description="length, or a rule of router.toml (medical, legal, complex, …)")
    points: int
    matched: list[str] = Field(description="The terms that matched (for length: the word count)")


class ClassificationView(BaseModel):
    score: int
    complexity: Literal["simple", "medium", "complex"]
    word_count: int
    rules: list[RuleFired]


class DecisionView(BaseModel):
    """Where the query goes and why."""

    backend: str
    tier: Literal["local", "remote"]
    reason: Literal["simple-query", "complex-query", "medium-query-ab", "medium-query-abtest", "forced"]
    variant: Literal["local", "remote", "A", "B"] | None = Field(
        description="The side of a medium query: local/remote by the config's split, A/B in a routing A/B test"
    )
    ab_test_id: int | None = Field(None, description="The routing A/B test that chose the backend")
    classification: ClassificationView
    estimated_cost: float = Field(description="In the config's currency; token-priced APIs: an upper estimate")


@router.post("/v1/route/decide", responses=responses(400, 401, 403, 408, 413, 422, 429, 503))
def decide(body: DecideRequest, _caller: Caller = Depends(require_key)) -> DecisionView:
    """Classify a query and say which backend would serve it, at once: no job, no backend call."""
    return DecisionView.model_validate(decide_route(body.query, user_id=body.user_id, backend=body.backend))


class RouteRequest(DecideRequest):
    image: str | None = Field(default=None, description="An image for the local backend: base64 or a data URL")
    idempotency_key: str | None = Field(default=None, max_length=200, pattern=NO_NUL)


class RouteAccepted(BaseModel):
    job_id: str
    status: str
    decision: DecisionView


@router.post(
    "/v1/jobs/route",
    status_code=202,
    responses={
        **responses(400, 401, 403, 408, 409, 413, 415, 422, 429, 503),
        202: {"description": "Accepted", "headers": LOCATION},
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": openapi_schema(RouteRequest)}}}
    },
)
async def submit(request: Request, response: Response, caller: Caller = Depends(require_key)) -> RouteAccepted:
    """Route a query (with an optional image) as a job of kind `route`; poll it at `Location`.
    The answer, the backend that really served it and the cost are in the job's result."""
    settings = get_settings()
    body = await parse_json(request, RouteRequest, base64_length(settings.max_image_bytes) + JSON_OVERHEAD_BYTES)
    image = decode_image(body.image, settings.max_image_bytes) if body.image is not None else None
    outcome, decision = await run_in_threadpool(
        submit_route,
        body.query,
        image=image,
        user_id=body.user_id,
        backend=body.backend,
        idempotency_key=body.idempotency_key,
        api_key_name=caller.key_name,
    )
    response.headers["Location"] = f"/v1/jobs/{outcome.job_id}"
    return RouteAccepted(job_id=outcome.job_id, status=outcome.status, decision=DecisionView.model_validate(decision))


@router.get("/v1/reports/costs", responses=responses(401, 403, 422, 429, 503))
def costs(
    since: str | None = Query(
        default=None,
        pattern=r"^\d{4}-\d{2}-\d{2}",
        description="Only jobs finished since: YYYY-MM-DD or an ISO timestamp (UTC unless it says otherwise)",
    ),
    caller: Caller = Depends(require_key),
) -> dict[str, Any]:
    """Requests and cost per backend that served, what the same queries would have cost all
    remote, the savings, and the daily / monthly / yearly projection: of this key's jobs
    (`onnxq report costs` shows everyone's)."""
    return cost_report(parse_since(since), api_key_name=caller.key_name)
