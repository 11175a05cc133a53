"""Request bodies: bounded reads, base64 images, and the JSON/multipart forms of a submission."""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from onnxq.errors import InputTooLarge, OnnxqError

JSON_OVERHEAD_BYTES = 64 * 1024  # room for the other JSON fields around a base64 image
# PostgreSQL text cannot hold NUL characters: refusing them at the edge (422) keeps both
# databases alike instead of failing inside PostgreSQL.
NO_NUL = r"^[^\x00]*$"
T = TypeVar("T", bound=BaseModel)


class InferenceRequest(BaseModel):
    """A JSON inference request: the image as base64 or a `data:` URL."""

    model: str = Field(description="NAME or NAME@VERSION", min_length=1, max_length=260, pattern=NO_NUL)
    image: str = Field(description="The image, base64-encoded or as a data URL", min_length=1)
    user_id: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    idempotency_key: str | None = Field(default=None, max_length=200, pattern=NO_NUL)


MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file", "model"],
    "properties": {
        "file": {"type": "string", "format": "binary"},
        "model": {
            "type": "string",
            "description": "NAME or NAME@VERSION",
            "minLength": 1,
            "maxLength": 260,
            "pattern": NO_NUL,
        },
        "user_id": {"type": "string", "maxLength": 200, "pattern": NO_NUL},
        "idempotency_key": {"type": "string", "maxLength": 200, "pattern": NO_NUL},
    },
}


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with nested models written in place, for a hand-declared OpenAPI
    request body: pydantic's `#/$defs/...` references would resolve against the document's
    root, where nothing is defined."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rpartition("/")[2]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return dict(inline(schema))


def base64_length(max_bytes: int) -> int:
    """The longest base64 text that can decode to at most `max_bytes` bytes."""
    return (max_bytes + 2) // 3 * 4


def decode_image(text: str, max_bytes: int) -> bytes:
    """Base64 or data-URL text → bytes, refusing oversized input before decoding it."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    if len(text) > base64_length(max_bytes) + 4:
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


def invalid(exc: ValidationError) -> OnnxqError:
    """A pydantic error as onnxq's `validation_error` (or `bad_request` for broken JSON)."""
    if any(error["type"] == "json_invalid" for error in exc.errors()):
        return OnnxqError("The body is not valid JSON.", code="bad_request")
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return OnnxqError(f"{where}: {first.get('msg')}", code="validation_error")


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "application/json").split(";")[0].strip().lower()


async def parse_json(request: Request, model: type[T], limit: int) -> T:
    """A JSON body of `model`, read with `read_bounded`."""
    if content_type(request) != "application/json":
        raise OnnxqError("Send the body as application/json.", code="unsupported_media_type")
    raw = await read_bounded(request, limit)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid(exc) from None


async def parse_submission(request: Request, max_image_bytes: int) -> tuple[InferenceRequest, bytes]:
    """One image submission, as JSON (base64 / data URL) or multipart (`file` field)."""
    kind = content_type(request)
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise OnnxqError("multipart: the image goes in a file field named `file`.", code="validation_error")
        data = await upload.read(max_image_bytes + 1)
        if len(data) > max_image_bytes:
            raise InputTooLarge(f"The image is over the {max_image_bytes / 2**20:.0f} MiB limit.")
        fields = {key: form.get(key) for key in ("model", "user_id", "idempotency_key")}
        try:
            return InferenceRequest.model_validate({**fields, "image": "-"}), data
        except ValidationError as exc:
            raise invalid(exc) from None
    if kind == "application/json":
        body = await parse_json(request, InferenceRequest, base64_length(max_image_bytes) + JSON_OVERHEAD_BYTES)
        return body, decode_image(body.image, max_image_bytes)
    raise OnnxqError(
        f"Unsupported content type {kind!r}: send application/json or multipart/form-data.",
        code="unsupported_media_type",
    )
