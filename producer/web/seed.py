"""The seed-compatible endpoint: `POST /api/pytorch/inference` submits a job, waits for it and
answers in the original system's response shape (plus `job_id`)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from onnxq.errors import OnnxqError
from onnxq.settings import get_settings
from producer.client import submit_inference
from producer.web.auth import Caller, require_key
from producer.web.bodies import JSON_OVERHEAD_BYTES, NO_NUL, base64_length, decode_image, parse_json
from producer.web.errors import DESCRIPTIONS, ErrorDetail, error_response
from producer.web.jobs import LOCATION
from producer.web.metrics import count_submitted, observe_job_latency
from producer.web.waiter import waiter_for
from schema.tables import JobStatus

router = APIRouter(tags=["seed compatibility"])


class SeedRequest(BaseModel):
    """The original system's request body."""

    model_name: str = Field(description="NAME or NAME@VERSION", min_length=1, max_length=260, pattern=NO_NUL)
    image: str = Field(description="The image, base64-encoded or as a data URL", min_length=1)
    user_id: str | None = Field(default=None, max_length=200, pattern=NO_NUL)


class SeedProbability(BaseModel):
    probability: float = Field(description="0 to 1, rounded to 4 places")
    percentage: str = Field(description='The same probability as a percentage, e.g. "92.45%"')


class SeedPerformance(BaseModel):
    preprocessing_ms: int
    inference_ms: int
    total_ms: int = Field(description="From acceptance to the committed result, queueing included")


class SeedResult(BaseModel):
    """A classification, in the original system's shape."""

    success: Literal[True] = True
    prediction: str
    confidence: str = Field(description='The predicted label\'s probability as a percentage, e.g. "92.45%"')
    probabilities: dict[str, SeedProbability]
    performance: SeedPerformance
    job_id: str


class SeedPending(BaseModel):
    """The job had not ended within `ONNXQ_SYNC_WAIT_S`: poll it at the `Location` header."""

    success: Literal[False] = False
    job_id: str
    status: str


class SeedError(BaseModel):
    """An error. `success` and `job_id` are present when the job was accepted and then failed."""

    success: Literal[False] | None = None
    error: ErrorDetail
    job_id: str | None = None


ERROR_STATUSES = (400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 500, 503)
RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": SeedPending.__doc__,
        "model": SeedPending,
        "headers": LOCATION,
    },
    **{
        status: {
            "description": f"{DESCRIPTIONS[status]}; or the job itself failed with this status",
            "model": SeedError,
        }
        for status in ERROR_STATUSES
    },
}


def percentage(probability: float) -> str:
    return f"{probability * 100:.2f}%"


def seed_result(view: dict[str, Any]) -> SeedResult:
    """A succeeded job's view in the seed's shape."""
    result = view["result"]
    timings = result["timings_ms"]
    return SeedResult(
        prediction=result["prediction"],
        confidence=percentage(result["confidence"]),
        probabilities={
            label: SeedProbability(probability=round(p, 4), percentage=percentage(p))
            for label, p in result["probabilities"].items()
        },
        performance=SeedPerformance(
            preprocessing_ms=round(timings["preprocessing"]),
            inference_ms=round(timings["inference"]),
            total_ms=round(timings["total"] or 0),
        ),
        job_id=view["job_id"],
    )


def failure_response(view: dict[str, Any]) -> JSONResponse:
    """A failed job: its error, with the HTTP status its code maps to."""
    error = OnnxqError(view["error"]["message"], code=view["error"]["code"])
    plain = error_response(error)
    headers = {"Retry-After": plain.headers["retry-after"]} if "retry-after" in plain.headers else None
    body = {"success": False, "error": error.as_dict(), "job_id": view["job_id"]}
    return JSONResponse(body, status_code=plain.status_code, headers=headers)


@router.post(
    "/api/pytorch/inference",
    response_model=SeedResult,
    responses=RESPONSES,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": SeedRequest.model_json_schema()}}}
    },
)
async def seed_inference(request: Request, caller: Caller = Depends(require_key)) -> SeedResult | JSONResponse:
    """Classify one image and wait for the answer, as the original system did. After
    `ONNXQ_SYNC_WAIT_S` (default 30 s) it answers 202 with the job id instead: poll the job at
    the `Location` header."""
    settings = get_settings()
    body = await parse_json(request, SeedRequest, base64_length(settings.max_image_bytes) + JSON_OVERHEAD_BYTES)
    data = decode_image(body.image, settings.max_image_bytes)
    outcome = await run_in_threadpool(
        submit_inference, data, body.model_name, user_id=body.user_id, api_key_name=caller.key_name
    )
    count_submitted(outcome)
    view = await waiter_for(request.app).wait(outcome.job_id, settings.sync_wait_s, gone=request.is_disconnected)
    if view is not None and view["status"] == JobStatus.SUCCEEDED:
        observe_job_latency(outcome.model, view["result"]["timings_ms"]["total"] / 1000)
        return seed_result(view)
    if view is not None and view["status"] == JobStatus.FAILED:
        return failure_response(view)
    pending = SeedPending(job_id=outcome.job_id, status=view["status"] if view is not None else outcome.status)
    return JSONResponse(pending.model_dump(), status_code=202, headers={"Location": f"/v1/jobs/{outcome.job_id}"})
