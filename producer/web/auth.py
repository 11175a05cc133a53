"""API-key authentication and the per-key rate limit, as one FastAPI dependency.

Keys come in `Authorization: Bearer KEY` or `X-API-Key: KEY`. The rate limit is a fixed
one-minute window per key counted in Redis, so it holds across several web processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import OperationalError, ProgrammingError

from onnxq.errors import Overloaded, RetryableError, Unauthorized
from onnxq.payloads import get_redis
from onnxq.settings import get_settings
from producer.client import database_error
from producer.keys import authenticate

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY` (from `onnxq keys create NAME`)")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key, in its own header")
WINDOW_S = 60


@dataclass(frozen=True)
class Caller:
    """Who sent the request: the API key's name, or None when auth is off."""

    key_name: str | None


async def require_key(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    header_key: str | None = Depends(api_key_header),
) -> Caller:
    """The caller of a protected route: 401 without a valid key, 403 for a revoked one, 429
    past the key's rate limit."""
    if not get_settings().api_auth:
        return Caller(key_name=None)
    key = credentials.credentials if credentials is not None else header_key
    if not key:
        raise Unauthorized("An API key is required: send `Authorization: Bearer KEY` or `X-API-Key: KEY`.")
    try:
        name = await run_in_threadpool(authenticate, key)
    except (OperationalError, ProgrammingError) as exc:
        raise database_error(exc) from exc
    await run_in_threadpool(count_request, name)
    return Caller(key_name=name)


def count_request(key_name: str) -> None:
    """Count one request against `key_name`'s window; `rate_limited` once it is over."""
    settings = get_settings()
    limit = settings.rate_limit_per_minute
    if limit <= 0:
        return
    now = time.time()
    window = int(now // WINDOW_S)
    counter = f"{settings.redis_namespace}:ratelimit:{key_name}:{window}"
    try:
        with get_redis().pipeline(transaction=True) as pipe:
            pipe.incr(counter)
            pipe.expire(counter, WINDOW_S * 2)
            count, _ = pipe.execute()
    except redis.RedisError as exc:
        raise RetryableError("The queue (Redis) is unavailable; try again shortly.") from exc
    if count > limit:
        retry_after = max(1, int((window + 1) * WINDOW_S - now) + 1)
        raise Overloaded(
            f"Rate limit of {limit} requests per minute for key {key_name!r} reached; retry in {retry_after} s.",
            code="rate_limited",
            retry_after_s=retry_after,
        )
