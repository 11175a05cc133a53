"""The job API: submit images (one or a batch), read a job, record its ground truth."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from onnxq.errors import OnnxqError
from onnxq.settings import get_settings
from producer.client import check_queue_depth, get_job, record_feedback, submit_inference
from producer.web.auth import Caller, require_key
from producer.web.bodies import (
    JSON_OVERHEAD_BYTES,
    MULTIPART_SCHEMA,
    NO_NUL,
    InferenceRequest,
    decode_image,
    openapi_schema,
    parse_json,
    parse_submission,
)
from producer.web.errors import ErrorDetail, responses
from producer.web.metrics import count_submitted
from schema.registry import cached_model

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobId = Annotated[str, Path(description="The id a submission answered with", pattern=NO_NUL)]


class Accepted(BaseModel):
    """A job accepted for processing."""

    job_id: str
    status: str


class JobView(BaseModel):
    """A job as users see it (`onnxq status --json` prints the same)."""

    job_id: str
    kind: str = Field(description="inference or route")
    status: Literal["queued", "running", "succeeded", "failed"]
    created_at: str = Field(description="ISO 8601, UTC")
    started_at: str | None
    finished_at: str | None
    result: dict[str, Any] | None = Field(
        description="Once succeeded: model, model_version, prediction, confidence, probabilities (label → "
        "probability), batch_size, timings_ms (queue, preprocessing, inference, total)"
    )
    error: ErrorDetail | None = Field(description="Once failed: why")


class BatchImage(BaseModel):
    image: str = Field(description="The image, base64-encoded or as a data URL", min_length=1)
    idempotency_key: str | None = Field(default=None, max_length=200, pattern=NO_NUL)


class BatchRequest(BaseModel):
    """Several images for one model in one request."""

    model: str = Field(description="NAME or NAME@VERSION", min_length=1, max_length=260, pattern=NO_NUL)
    images: list[BatchImage] = Field(min_length=1, description="At most ONNXQ_MAX_BATCH_IMAGES (default 32)")
    user_id: str | None = Field(default=None, max_length=200, pattern=NO_NUL)


class BatchEntry(BaseModel):
    """One image of a batch request: its job, or why it was refused."""

    index: int
    job_id: str | None = None
    status: str | None = None
    error: ErrorDetail | None = None


class BatchAccepted(BaseModel):
    jobs: list[BatchEntry]


class Feedback(BaseModel):
    label: str = Field(
        min_length=1, max_length=200, pattern=NO_NUL, description="The true label: one of the model's labels"
    )


class FeedbackRecorded(BaseModel):
    job_id: str
    label: str
    prediction: str | None = Field(description="What the model said, once the job succeeded")
    correct: bool | None


SUBMIT_ERRORS = responses(400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 503)
LOCATION = {"Location": {"description": "The job's URL, to poll", "required": True, "schema": {"type": "string"}}}


@router.post(
    "/inference",
    status_code=202,
    responses={**SUBMIT_ERRORS, 202: {"description": "Accepted", "headers": LOCATION}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": openapi_schema(InferenceRequest)},
                "multipart/form-data": {"schema": MULTIPART_SCHEMA},
            },
        }
    },
)
async def submit(request: Request, response: Response, caller: Caller = Depends(require_key)) -> Accepted:
    """Submit one image for classification, as JSON (base64 or data URL) or as
    multipart/form-data (`file`, `model`, `user_id`, `idempotency_key`); poll the job at the
    `Location` it answers with."""
    body, data = await parse_submission(request, get_settings().max_image_bytes)
    outcome = await run_in_threadpool(
        submit_inference,
        data,
        body.model,
        user_id=body.user_id,
        idempotency_key=body.idempotency_key,
        api_key_name=caller.key_name,
    )
    count_submitted(outcome)
    response.headers["Location"] = f"/v1/jobs/{outcome.job_id}"
    return Accepted(job_id=outcome.job_id, status=outcome.status)


@router.post(
    "/inference:batch",
    status_code=202,
    # An entry carries either job_id and status, or error: no nulls for the other.
    response_model_exclude_none=True,
    responses=SUBMIT_ERRORS,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": openapi_schema(BatchRequest)}}}
    },
)
async def submit_batch(request: Request, caller: Caller = Depends(require_key)) -> BatchAccepted:
    """Submit several images for one model. Entries come back in order, one per image; a bad
    image gets its own error entry and does not sink the others."""
    settings = get_settings()
    body = await parse_json(request, BatchRequest, settings.max_batch_request_bytes + JSON_OVERHEAD_BYTES)
    if len(body.images) > settings.max_batch_images:
        raise OnnxqError(
            f"images: at most {settings.max_batch_images} images per batch request (got {len(body.images)}).",
            code="validation_error",
        )
    # Whole-request refusals first: an unknown model or a full queue fails every image alike.
    await run_in_threadpool(cached_model, body.model)
    await run_in_threadpool(check_queue_depth)
    entries = []
    for index, item in enumerate(body.images):
        try:
            data = decode_image(item.image, settings.max_image_bytes)
            outcome = await run_in_threadpool(
                submit_inference,
                data,
                body.model,
                user_id=body.user_id,
                idempotency_key=item.idempotency_key,
                api_key_name=caller.key_name,
                check_depth=False,
            )
        except OnnxqError as exc:
            entries.append(BatchEntry(index=index, error=ErrorDetail(**exc.as_dict())))
        else:
            count_submitted(outcome)
            entries.append(BatchEntry(index=index, job_id=outcome.job_id, status=outcome.status))
    return BatchAccepted(jobs=entries)


@router.get("/{job_id}", responses=responses(401, 403, 404, 422, 429, 503))
def read_job(job_id: JobId, caller: Caller = Depends(require_key)) -> JobView:
    """The job: status, result or error (404 for an id onnxq never accepted, or one another API
    key submitted)."""
    return JobView.model_validate(get_job(job_id, api_key_name=caller.key_name))


@router.post("/{job_id}/feedback", responses=responses(400, 401, 403, 404, 408, 413, 422, 429, 503))
def feedback(job_id: JobId, body: Feedback, caller: Caller = Depends(require_key)) -> FeedbackRecorded:
    """Record the ground truth for a job this key submitted (one of its model's labels), kept
    with the job for accuracy in the daily metrics and A/B tests. Sending it again replaces it."""
    recorded = record_feedback(job_id, body.label, api_key_name=caller.key_name)
    return FeedbackRecorded(**recorded)
