"""The remote backend client: one query (and an optional image) to an OpenAI-compatible
chat-completions endpoint, with retries, and the answer, token counts and cost that came back.

Nothing here logs or raises with the query text, the image or the API key: failures say which
backend, which HTTP status and which `reason`, no more. Response bodies are not quoted either,
since an API may echo the prompt in its error messages.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from PIL import Image

from onnxq.errors import ImageDecodeError, RetryableError
from onnxq.settings import get_settings
from workers.routing.config import OpenAIBackend

log = logging.getLogger(__name__)

Reason = Literal["timeout", "rate_limited", "server_error", "connection_failed", "client_error", "bad_response"]
RETRIED: frozenset[Reason] = frozenset({"timeout", "rate_limited", "server_error", "connection_failed"})
MAX_WAIT_S = 5.0  # the longest single wait between attempts, whatever Retry-After asks for
BACKOFF_BASE_S = 0.2

# One client per process, so worker threads share its connection pool (httpx.Client is
# thread-safe). It holds no connection until the first call, so it survives a fork unused.
_http = httpx.Client(follow_redirects=False, headers={"User-Agent": "onnxq"})


class BackendFailed(RetryableError):
    """A remote backend did not give an answer; `reason` says why, for the fallback to act on."""

    code = "backend_failed"

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


@dataclass(frozen=True)
class RemoteAnswer:
    """What a remote backend answered, what it counted and what the call cost."""

    answer: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency_ms: float  # the whole call, retries and waits included
    attempts: int


@dataclass(frozen=True)
class _Failure:
    reason: Reason
    status: int | None = None
    retry_after_s: float | None = None


def call_remote(name: str, spec: OpenAIBackend, query: str, image: bytes | None) -> RemoteAnswer:
    """Ask backend `name` about `query` (and `image`); retry what may pass, raise BackendFailed
    for what did not. The whole call stays within `timeout_s * (retries + 1)`."""
    body = {
        "model": spec.model,
        "messages": [{"role": "user", "content": _content(query, image)}],
        "max_tokens": spec.max_tokens,
    }
    headers = {}
    if spec.api_key_env and (key := get_settings().env_secret(spec.api_key_env)):
        headers["Authorization"] = f"Bearer {key}"
    url = spec.base_url.rstrip("/") + "/chat/completions"
    started = time.monotonic()
    deadline = started + spec.timeout_s * (spec.retries + 1)
    attempt = 0
    while True:
        attempt += 1
        # The last attempt gets what is left of the budget (at least a moment, if a sleep overran).
        outcome = _attempt(url, body, headers, max(0.01, min(spec.timeout_s, deadline - time.monotonic())))
        if not isinstance(outcome, _Failure):
            latency_ms = (time.monotonic() - started) * 1000
            return _answer(name, spec, outcome, latency_ms, attempt)
        what = f"HTTP {outcome.status}" if outcome.status else outcome.reason.replace("_", " ")
        log.warning("backend %s: attempt %d failed: %s (%s)", name, attempt, outcome.reason, what)
        wait_s = _wait_s(outcome, attempt)
        if outcome.reason not in RETRIED or attempt > spec.retries or time.monotonic() + wait_s >= deadline:
            message = f"Backend {name} failed ({what}) after {attempt} attempt(s)."
            raise BackendFailed(outcome.reason, message + _hint(spec, outcome))
        time.sleep(wait_s)


def _hint(spec: OpenAIBackend, failure: _Failure) -> str:
    """What to do about a refused API key, for the failure's message."""
    if failure.status not in (401, 403):
        return ""
    if spec.api_key_env:
        return f" Check the API key in the environment variable {spec.api_key_env}."
    return " It may need an API key: name its environment variable in the backend's api_key_env."


def _content(query: str, image: bytes | None) -> str | list[dict[str, Any]]:
    """The user message's content: the text alone, or OpenAI's vision form with the image inline."""
    if image is None:
        return query
    return [{"type": "text", "text": query}, {"type": "image_url", "image_url": {"url": _data_url(image)}}]


def _data_url(image: bytes) -> str:
    """A base64 data URL of the image; formats other than PNG and JPEG, which not every
    endpoint reads, are re-encoded as PNG."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    elif image.startswith(b"\xff\xd8\xff"):
        mime = "image/jpeg"
    else:
        buffer = io.BytesIO()
        try:
            with Image.open(io.BytesIO(image)) as decoded:
                decoded.save(buffer, format="PNG")
        except OSError:
            raise ImageDecodeError("The image could not be decoded; send a PNG or JPEG file.") from None
        image, mime = buffer.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def _attempt(url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float) -> bytes | _Failure:
    """One POST: the body of a 200, else what went wrong. `timeout_s` bounds the whole attempt:
    httpx's timeout is per read, so a server trickling its answer is cut off here."""
    deadline = time.monotonic() + timeout_s
    try:
        with _http.stream("POST", url, json=body, headers=headers, timeout=timeout_s) as response:
            status = response.status_code
            if status != 200:
                return _status_failure(response)
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    return _Failure("timeout")
            return b"".join(chunks)
    except httpx.TimeoutException:
        return _Failure("timeout")
    except httpx.TransportError:
        return _Failure("connection_failed")


def _status_failure(response: httpx.Response) -> _Failure:
    status = response.status_code
    if status == 429:
        return _Failure("rate_limited", status, _retry_after_s(response))
    if status >= 500:
        return _Failure("server_error", status, _retry_after_s(response) if status == 503 else None)
    if 400 <= status < 500:
        return _Failure("client_error", status)
    return _Failure("bad_response", status)


def _retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds, when the server sent it in that form (the HTTP-date form is rare
    from APIs and falls back to the backoff)."""
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def _wait_s(failure: _Failure, attempt: int) -> float:
    """How long to wait before the next attempt: what the server asked, else exponential
    backoff with jitter (so that many workers retrying do not hit the server in step)."""
    if failure.retry_after_s is not None:
        return min(failure.retry_after_s, MAX_WAIT_S)
    backoff_s = min(BACKOFF_BASE_S * 2 ** (attempt - 1), MAX_WAIT_S)
    return random.uniform(backoff_s / 2, backoff_s)


def _answer(name: str, spec: OpenAIBackend, content: bytes, latency_ms: float, attempts: int) -> RemoteAnswer:
    """The answer, tokens and cost of a 200 response; BackendFailed("bad_response") if it is
    not a chat completion."""
    parsed = _parse(content)
    if parsed is None:
        log.warning("backend %s: HTTP 200 but not a chat completion", name)
        raise BackendFailed("bad_response", f"Backend {name} answered HTTP 200 with something not a chat completion.")
    answer, prompt_tokens, completion_tokens = parsed
    tokens = prompt_tokens + completion_tokens
    cost = spec.cost_per_request + spec.cost_per_1k_tokens * tokens / 1000
    return RemoteAnswer(answer, prompt_tokens, completion_tokens, cost, latency_ms, attempts)


def _parse(content: bytes) -> tuple[str, int, int] | None:
    """(content, prompt tokens, completion tokens) of a chat completion, or None if the body is
    not one. A response without `usage` counts no tokens (some local servers leave it out)."""
    try:
        completion = json.loads(content)
        content = completion["choices"][0]["message"]["content"]
        usage = completion.get("usage") or {}
        counts = (usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
    except (ValueError, LookupError, TypeError, AttributeError):
        return None
    if not isinstance(content, str) or not all(isinstance(n, int) and n >= 0 for n in counts):
        return None
    return content, counts[0], counts[1]
