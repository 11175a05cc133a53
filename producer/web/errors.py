"""Error codes → HTTP statuses, and the `{"error": {"code", "message"}}` body of every error."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from onnxq.errors import OnnxqError, Overloaded, PermanentError
from producer.client import database_error

# Error code → HTTP status. Anything not listed is a 400 (permanent) or 503 (retryable).
STATUS_BY_CODE = {
    "bad_request": 400,
    "invalid_base64": 400,
    "unauthorized": 401,
    "key_revoked": 403,
    "forbidden": 403,
    "unknown_model": 404,
    "job_not_found": 404,
    "abtest_not_found": 404,
    "model_inactive": 409,
    "idempotency_conflict": 409,
    "abtest_conflict": 409,
    "input_too_large": 413,
    "not_an_image": 415,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "unknown_label": 422,
    "unknown_backend": 422,
    "image_too_many_pixels": 422,
    "image_too_small": 422,
    "image_decode_failed": 422,
    # How an accepted job can end (the synchronous endpoint answers with its job's error).
    "inference_failed": 422,
    "payload_missing": 500,
    "lost": 500,
    "model_checksum_mismatch": 500,
    "invalid_model_config": 500,
    "invalid_router_config": 500,
    "retries_exhausted": 503,
    "rate_limited": 429,
    "queue_full": 429,
    "database_not_migrated": 503,
    "service_unavailable": 503,
}
DESCRIPTIONS = {
    400: "Malformed body or base64",
    401: "No API key, or an unknown one",
    403: "The API key was revoked",
    404: "Unknown model or job",
    409: "Idempotency key reused for another request, or the model is not active",
    408: "The request body stalled",
    413: "Body or image over the size limit",
    415: "Not an image, or an unsupported content type",
    422: "Invalid request or unusable image",
    429: "Rate limit or queue full: retry after `Retry-After` seconds",
    500: "The job failed on the server's side (its model or its stored input); not retried",
    503: "Redis or the database is unavailable: retry after `Retry-After` seconds",
}
RETRY_AFTER_S = 5
log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable error code")
    message: str = Field(description="What went wrong and what to do")


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_status(error: OnnxqError) -> int:
    return STATUS_BY_CODE.get(error.code, 400 if isinstance(error, PermanentError) else 503)


def error_response(error: OnnxqError) -> JSONResponse:
    """The JSON response for `error`, with `Retry-After` where waiting helps."""
    status = error_status(error)
    headers = None
    if status in (429, 503):
        headers = {"Retry-After": str(error.retry_after_s if isinstance(error, Overloaded) else RETRY_AFTER_S)}
    return JSONResponse({"error": error.as_dict()}, status_code=status, headers=headers)


RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "required": True, "schema": {"type": "integer"}}
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entry for the error statuses a route can answer."""
    return {
        status: {
            "description": DESCRIPTIONS[status],
            "model": ErrorBody,
            **({"headers": RETRY_AFTER_HEADER} if status in (429, 503) else {}),
        }
        for status in statuses
    }


def onnxq_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OnnxqError)
    return error_response(exc)


def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(OnnxqError("The body is not valid JSON.", code="bad_request"))
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return error_response(OnnxqError(f"{where}: {first.get('msg')}", code="validation_error"))


HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "input_too_large",
}


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (no such route, wrong method, unreadable body) in onnxq's shape."""
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code, headers=exc.headers
    )


def http_exception_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return http_error_response(exc)


def internal_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """A bug, not bad input: answer 500 in the usual shape (the traceback goes to the log only)."""
    log.error("unhandled error answering a request", exc_info=exc)
    return JSONResponse(
        {"error": {"code": "internal_error", "message": "An internal error occurred; it has been logged."}},
        status_code=500,
    )


def database_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """A database that is down or not migrated, wherever a route touched it: 503, never a 500."""
    return error_response(database_error(exc))
