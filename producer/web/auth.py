"""API-key authentication and the per-key rate limit, as one FastAPI dependency.

Keys come in `Authorization: Bearer KEY` or `X-API-Key: KEY`. The rate limit is a fixed
one-minute window per key counted in Redis, so it holds across several web processes.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import redis
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from onnxq.errors import Overloaded, RetryableError, Unauthorized
from onnxq.payloads import get_redis
from onnxq.settings import get_settings
from producer.keys import authenticate, is_cached

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY` (from `onnxq keys create NAME`)")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key, in its own header")
WINDOW_S = 60


@dataclass(frozen=True)
class Caller:
    """Who sent the request: the API key's name, or None when auth is off."""

    key_name: str | None


async def require_key(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    header_key: str | None = Depends(api_key_header),
) -> Caller:
    """The caller of a protected route: 401 without a valid key, 403 for a revoked one, 429
    past the key's rate limit (or, per client address, past `ONNXQ_FAILED_AUTH_PER_MINUTE` refused
    keys: guessing costs the database nothing)."""
    client = request.client.host if request.client is not None else None
    if not get_settings().api_auth:
        if client is not None and not _loopback_or_not_ip(client):
            # However the app was started: with keys off, only this machine is served.
            raise Unauthorized("API keys are switched off on this server, so it serves only loopback clients.")
        return Caller(key_name=None)
    key = credentials.credentials if credentials is not None else header_key
    failures = f"failed-auth:{client}"
    if not key:
        raise Unauthorized("An API key is required: send `Authorization: Bearer KEY` or `X-API-Key: KEY`.")
    if not is_cached(key):
        # A client that keeps sending unknown keys is stopped here, before they cost a query;
        # keys this process already knows stay usable from the same address (a shared proxy).
        await run_in_threadpool(count_request, failures, get_settings().failed_auth_per_minute, False)
    try:
        name = await run_in_threadpool(authenticate, key)
    except Unauthorized:
        await run_in_threadpool(count_request, failures, get_settings().failed_auth_per_minute, True)
        raise
    await run_in_threadpool(count_request, name, get_settings().rate_limit_per_minute, True)
    return Caller(key_name=name)


def _loopback_or_not_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # not a network peer (an in-process test client)


def count_request(bucket: str, limit: int, count: bool) -> None:
    """Count one request against `bucket`'s one-minute window (or, with `count` False, only
    look); `rate_limited` once it is over `limit` (0: no limit)."""
    if limit <= 0:
        return
    settings = get_settings()
    now = time.time()
    window = int(now // WINDOW_S)
    counter = f"{settings.redis_namespace}:ratelimit:{bucket}:{window}"
    try:
        if count:
            with get_redis().pipeline(transaction=True) as pipe:
                pipe.incr(counter)
                pipe.expire(counter, WINDOW_S * 2)
                seen, _ = pipe.execute()
        else:
            seen = int(get_redis().get(counter) or 0) + 1
    except redis.RedisError as exc:
        raise RetryableError("The queue (Redis) is unavailable; try again shortly.") from exc
    if seen > limit:
        retry_after = max(1, int((window + 1) * WINDOW_S - now) + 1)
        raise Overloaded(
            f"Rate limit of {limit} requests per minute reached; retry in {retry_after} s.",
            code="rate_limited",
            retry_after_s=retry_after,
        )
