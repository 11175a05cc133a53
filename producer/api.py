"""The web process (`onnxq api`): HTTP ingress for upstream systems, on the producer's own code.

HTTP status codes are chosen here and only here, from the stable error codes of `onnxq.errors`.
Handlers are plain `def`s: the producer's database and Redis calls block, so FastAPI runs them in
its thread pool.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import redis
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select
from starlette.datastructures import UploadFile as StarletteUpload

from onnxq import __version__
from onnxq.errors import InputTooLarge, OnnxqError, PermanentError
from onnxq.payloads import get_redis
from onnxq.settings import get_settings
from producer.client import get_job, submit_inference
from schema.db import get_engine
from schema.migrate import current_revision
from schema.tables import PytorchModel

JSON_OVERHEAD_BYTES = 64 * 1024  # room for the other JSON fields around the base64 image
# Error code → HTTP status. Anything not listed is a 400 (permanent) or 503 (retryable).
STATUS_BY_CODE = {
    "bad_request": 400,
    "invalid_base64": 400,
    "input_too_large": 413,
    "not_an_image": 415,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "image_too_many_pixels": 422,
    "image_too_small": 422,
    "image_decode_failed": 422,
    "unknown_model": 404,
    "job_not_found": 404,
    "model_inactive": 409,
    "idempotency_conflict": 409,
    "database_not_migrated": 503,
    "service_unavailable": 503,
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "model": dict[str, dict[str, str]]}
    for status, description in (
        (400, "Malformed body or base64"),
        (404, "Unknown model or job"),
        (409, "Idempotency key reused for another request, or the model is not active"),
        (413, "Image over the size limit"),
        (415, "Not an image"),
        (422, "Invalid request or unusable image"),
        (503, "Redis or the database is unavailable"),
    )
}


class InferenceRequest(BaseModel):
    """A JSON inference request: the image as base64 or a `data:` URL."""

    model: str = Field(description="NAME or NAME@VERSION", min_length=1, max_length=260)
    image: str = Field(description="The image, base64-encoded or as a data URL", min_length=1)
    user_id: str | None = Field(default=None, max_length=200)
    idempotency_key: str | None = Field(default=None, max_length=200)


class Accepted(BaseModel):
    """A job accepted for processing."""

    job_id: str
    status: str


def error_response(error: OnnxqError) -> JSONResponse:
    status = STATUS_BY_CODE.get(error.code, 400 if isinstance(error, PermanentError) else 503)
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"error": error.as_dict()}, status_code=status, headers=headers)


def decode_image(text: str, max_bytes: int) -> bytes:
    """Base64 or data-URL text → bytes, refusing oversized input before decoding it."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise InputTooLarge(f"The image is over the {max_bytes / 2**20:.0f} MiB limit.")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise OnnxqError("The image is not valid base64 (or a base64 data URL).", code="invalid_base64") from None


async def read_bounded(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes: never held whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputTooLarge(f"The request body is over {limit / 2**20:.0f} MiB.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputTooLarge(f"The request body is over {limit / 2**20:.0f} MiB.")
        chunks.append(chunk)
    return b"".join(chunks)


def _invalid(exc: ValidationError) -> OnnxqError:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return OnnxqError(f"{where}: {first.get('msg')}", code="validation_error")


REQUEST_BODIES = {
    "application/json": {"schema": InferenceRequest.model_json_schema()},
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "required": ["file", "model"],
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "model": {"type": "string", "description": "NAME or NAME@VERSION"},
                "user_id": {"type": "string"},
                "idempotency_key": {"type": "string"},
            },
        }
    },
}


def create_app() -> FastAPI:
    """The ASGI application (uvicorn factory: `producer.api:create_app`)."""
    app = FastAPI(title="onnxq", version=__version__, description="Queue-driven ONNX inference jobs.")

    @app.exception_handler(OnnxqError)
    def _onnxq_error(_request: Request, exc: OnnxqError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(OnnxqError(f"{where}: {first.get('msg')}", code="validation_error"))

    @app.post(
        "/v1/jobs/inference",
        status_code=202,
        responses=ERROR_RESPONSES,
        openapi_extra={"requestBody": {"required": True, "content": REQUEST_BODIES}},
    )
    async def submit(request: Request, response: Response) -> Accepted:
        """Submit one image for classification, as JSON (base64 or data URL) or as
        multipart/form-data (`file`, `model`, `user_id`, `idempotency_key`); poll the job at the
        `Location` it answers with."""
        limit = get_settings().max_image_bytes
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=8)
            upload = form.get("file")
            if not isinstance(upload, StarletteUpload):
                raise OnnxqError("multipart: the image goes in a file field named `file`.", code="validation_error")
            data = await upload.read(limit + 1)
            if len(data) > limit:
                raise InputTooLarge(f"The image is over the {limit / 2**20:.0f} MiB limit.")
            fields = {key: form.get(key) for key in ("model", "user_id", "idempotency_key")}
            try:
                body = InferenceRequest.model_validate({**fields, "image": "-"})
            except ValidationError as exc:
                raise _invalid(exc) from None
        elif content_type == "application/json":
            raw = await read_bounded(request, (limit + 2) // 3 * 4 + JSON_OVERHEAD_BYTES)
            try:
                body = InferenceRequest.model_validate_json(raw)
            except ValidationError as exc:
                if any(error["type"] == "json_invalid" for error in exc.errors()):
                    raise OnnxqError("The body is not valid JSON.", code="bad_request") from None
                raise _invalid(exc) from None
            data = decode_image(body.image, limit)
        else:
            raise OnnxqError(
                f"Unsupported content type {content_type!r}: send application/json or multipart/form-data.",
                code="unsupported_media_type",
            )
        outcome = await run_in_threadpool(
            submit_inference, data, body.model, user_id=body.user_id, idempotency_key=body.idempotency_key
        )
        response.headers["Location"] = f"/v1/jobs/{outcome.job_id}"
        return Accepted(job_id=outcome.job_id, status=outcome.status)

    @app.get("/v1/jobs/{job_id}", responses=ERROR_RESPONSES)
    def read_job(job_id: str) -> dict[str, Any]:
        """The job: status, result or error (404 for an id onnxq never accepted)."""
        return get_job(job_id)

    @app.get("/v1/models")
    def list_models() -> list[dict[str, Any]]:
        """Registered models with their status, labels and shapes."""
        with Session(get_engine()) as session:
            rows = session.exec(select(PytorchModel).order_by(col(PytorchModel.model_name), col(PytorchModel.id)))
            return [row.model_dump(mode="json", exclude={"config", "file_path"}) for row in rows]

    def health(response: Response) -> dict[str, Any]:
        """Redis, the database and the model repository: 200 when all answer, else 503."""
        checks = {"redis": _check_redis(), "database": _check_database(), "models": _check_models()}
        healthy = all(check["ok"] for check in checks.values())
        response.status_code = 200 if healthy else 503
        return {"status": "ok" if healthy else "unavailable", "checks": checks}

    app.get("/health", responses={503: {"description": "A dependency is down"}})(health)
    app.get("/api/health", responses={503: {"description": "A dependency is down"}})(health)
    return app


def _check_redis() -> dict[str, Any]:
    try:
        get_redis().ping()
        return {"ok": True}
    except redis.RedisError as exc:
        return {"ok": False, "error": type(exc).__name__}


def _check_database() -> dict[str, Any]:
    try:
        revision = current_revision()
    except SQLAlchemyError as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": revision is not None, "revision": revision}


def _check_models() -> dict[str, Any]:
    model_dir = get_settings().model_dir
    return {"ok": model_dir.is_dir(), "path": str(model_dir)}
