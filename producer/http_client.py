"""The Python client of the onnxq HTTP API, for upstream code that runs outside onnxq's hosts.

It speaks only HTTP (no Redis, no database): submit images, poll their jobs, send feedback.
Every error answer becomes a `ClientError` carrying the server's `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

TERMINAL_STATUSES = ("succeeded", "failed")
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_WAIT_S = 300.0
DEFAULT_POLL_S = 0.5
RETRY_STATUSES = (429, 503)  # the statuses that come with `Retry-After`

Image = bytes | Path


class ClientError(Exception):
    """An error answer of the API (`status` is its HTTP status, `code` and `message` come from its
    body), or no answer at all (`status` None, `code` "connection_failed" or "timeout")."""

    def __init__(self, status: int | None, code: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s  # from `Retry-After` on 429 and 503


class OnnxqClient:
    """A synchronous client of one onnxq web process (or the load balancer in front of several).

    Use it as a context manager, or call `close()`: it holds a pool of connections.
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> OnnxqClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(
        self, image: Image, model: str, *, user_id: str | None = None, idempotency_key: str | None = None
    ) -> str:
        """Submit one image (bytes, or the path of a file) as a multipart upload; its job id."""
        name, data = _read(image)
        fields = {"model": model, "user_id": user_id, "idempotency_key": idempotency_key}
        answer = self._request(
            "POST",
            "/v1/jobs/inference",
            data={key: value for key, value in fields.items() if value is not None},
            files={"file": (name, data, "application/octet-stream")},
        )
        return str(answer["job_id"])

    def submit_batch(
        self,
        images: Sequence[Image],
        model: str,
        *,
        user_id: str | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
    ) -> list[dict[str, Any]]:
        """Submit several images in one request; one entry per image, in order: `{"index",
        "job_id", "status"}`, or `{"index", "error": {"code", "message"}}` for a refused image."""
        keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(images)
        if len(keys) != len(images):
            raise ValueError(f"{len(images)} images but {len(keys)} idempotency keys")
        items: list[dict[str, Any]] = []
        for image, key in zip(images, keys, strict=True):
            item: dict[str, Any] = {"image": base64.b64encode(_read(image)[1]).decode("ascii")}
            if key is not None:
                item["idempotency_key"] = key
            items.append(item)
        body: dict[str, Any] = {"model": model, "images": items}
        if user_id is not None:
            body["user_id"] = user_id
        answer = self._request("POST", "/v1/jobs/inference:batch", json=body)
        entries: list[dict[str, Any]] = answer["jobs"]
        return entries

    def job(self, job_id: str) -> dict[str, Any]:
        """The job: status, result or error (`ClientError` 404 `job_not_found` for an unknown id)."""
        answer: dict[str, Any] = self._request("GET", f"/v1/jobs/{job_id}")
        return answer

    def wait(
        self, job_ids: Iterable[str], timeout_s: float = DEFAULT_WAIT_S, poll_s: float = DEFAULT_POLL_S
    ) -> dict[str, dict[str, Any]]:
        """Poll until every job has ended or `timeout_s` passes; the latest view of each job.

        A 429 or 503 answer is waited out for its `Retry-After` (within `timeout_s`, else it is
        raised); any other error is raised at once.
        """
        ids = list(dict.fromkeys(job_ids))
        views: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            for job_id in ids:
                if job_id in views and views[job_id]["status"] in TERMINAL_STATUSES:
                    continue
                views[job_id] = self._poll(job_id, deadline)
            pending = [job_id for job_id in ids if views[job_id]["status"] not in TERMINAL_STATUSES]
            remaining_s = deadline - time.monotonic()
            if not pending or remaining_s <= 0:
                return {job_id: views[job_id] for job_id in ids}
            time.sleep(min(poll_s, remaining_s))

    def feedback(self, job_id: str, label: str) -> dict[str, Any]:
        """Record the true label of a job; what was recorded, with whether the prediction matched."""
        answer: dict[str, Any] = self._request("POST", f"/v1/jobs/{job_id}/feedback", json={"label": label})
        return answer

    def models(self) -> list[dict[str, Any]]:
        """The registered models with their status, labels and shapes."""
        answer: list[dict[str, Any]] = self._request("GET", "/v1/models")
        return answer

    def health(self) -> dict[str, Any]:
        """The health report: `{"status": "ok" | "unavailable", "checks": {...}}`. An unhealthy
        server's 503 is returned as its report, not raised."""
        try:
            response = self._http.get("/health")
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        if response.status_code in (200, 503):
            try:
                report = response.json()
            except ValueError:
                report = None
            if isinstance(report, dict) and "checks" in report:
                return report
        raise _error(response)

    def _poll(self, job_id: str, deadline: float) -> dict[str, Any]:
        while True:
            try:
                return self.job(job_id)
            except ClientError as exc:
                if exc.status not in RETRY_STATUSES or exc.retry_after_s is None:
                    raise
                if time.monotonic() + exc.retry_after_s > deadline:
                    raise
                time.sleep(exc.retry_after_s)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        if response.is_error:
            raise _error(response)
        return response.json()

    def _transport_error(self, exc: httpx.TransportError) -> ClientError:
        if isinstance(exc, httpx.TimeoutException):
            return ClientError(None, "timeout", f"onnxq at {self.base_url} did not answer in time ({exc!r}).")
        return ClientError(
            None, "connection_failed", f"Could not reach onnxq at {self.base_url}: is `onnxq api` running? ({exc!r})"
        )


def _read(image: Image) -> tuple[str, bytes]:
    """A file name for the upload, and the image's bytes."""
    if isinstance(image, Path):
        return image.name, image.read_bytes()
    return "image", image


def _error(response: httpx.Response) -> ClientError:
    """The `ClientError` of an error answer: the server's code and message when the body has them
    (a proxy in between may answer with something else)."""
    retry_after = response.headers.get("Retry-After")
    retry_after_s = float(retry_after) if retry_after and retry_after.isdigit() else None
    try:
        detail = response.json()["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200] or response.reason_phrase
    return ClientError(response.status_code, code, message, retry_after_s=retry_after_s)
