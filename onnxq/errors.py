"""The error hierarchy: permanent errors fail a job at once, retryable ones are retried.

Every error a user can cause has a stable machine-readable `code` and a message that says what to
do. HTTP status codes are chosen at the HTTP edge, not here.
"""

from __future__ import annotations


class OnnxqError(Exception):
    """Base of every error onnxq raises on purpose."""

    code = "internal_error"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def as_dict(self) -> dict[str, str]:
        """The `{"code", "message"}` object that jobs, the CLI and the API show."""
        return {"code": self.code, "message": self.message}


class PermanentError(OnnxqError):
    """Retrying cannot help: the input or the request itself is wrong."""


class RetryableError(OnnxqError):
    """A dependency failed for now (database, Redis); the same work may succeed later."""

    code = "service_unavailable"
    retryable = True


# Input errors (producer validation and worker decoding).
class InputTooLarge(PermanentError):
    code = "input_too_large"


class NotAnImage(PermanentError):
    code = "not_an_image"


class ImageTooManyPixels(PermanentError):
    code = "image_too_many_pixels"


class ImageTooSmall(PermanentError):
    code = "image_too_small"


class ImageDecodeError(PermanentError):
    code = "image_decode_failed"


# Model errors.
class UnknownModel(PermanentError):
    code = "unknown_model"


class ModelInactive(PermanentError):
    code = "model_inactive"


class ModelChecksumMismatch(PermanentError):
    code = "model_checksum_mismatch"


class ModelFileMissing(RetryableError):
    """The registered file is not on this host (yet): another worker, or a later deploy, may
    have it."""

    code = "model_file_missing"


class InvalidModelConfig(PermanentError):
    code = "invalid_model_config"


class InferenceFailed(PermanentError):
    code = "inference_failed"


# Job errors.
class JobNotFound(PermanentError):
    code = "job_not_found"


class PayloadMissing(PermanentError):
    code = "payload_missing"


class RetriesExhausted(PermanentError):
    code = "retries_exhausted"


class JobLost(PermanentError):
    """The job's message and its input are both gone (e.g. Redis lost them): it cannot run."""

    code = "lost"


class IdempotencyConflict(PermanentError):
    code = "idempotency_conflict"


class DatabaseNotReady(PermanentError):
    code = "database_not_migrated"


class UnknownLabel(PermanentError):
    code = "unknown_label"


# Access and load errors (the HTTP edge).
class Unauthorized(PermanentError):
    code = "unauthorized"


class KeyRevoked(PermanentError):
    code = "key_revoked"


class KeyExists(PermanentError):
    code = "key_exists"


class Overloaded(RetryableError):
    """Too much work in hand: the caller should wait `retry_after_s` and try again."""

    def __init__(self, message: str, *, code: str, retry_after_s: int) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
