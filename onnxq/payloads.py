"""Job payloads in Redis: the image bytes (or a routing job's query) and what a worker needs to
run the job.

Messages carry only the job id; the payload sits under its own key with a TTL, is read by the
worker, and is deleted once the job has ended. Nothing here is ever logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import redis

from onnxq.settings import get_settings


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    """The process-wide Redis client for `REDIS_URL` (raw bytes, no decoding)."""
    return redis.Redis.from_url(get_settings().redis_url, socket_timeout=30, health_check_interval=30)


def payload_key(job_id: str) -> str:
    return f"{get_settings().redis_namespace}:payload:{job_id}"


@dataclass(frozen=True)
class Payload:
    """What the producer hands the worker for one inference job."""

    job_id: str
    model_id: int
    user_id: str | None
    input_hash: str
    created_at: datetime
    data: bytes
    api_key_name: str | None = None
    variant: str | None = None  # the A/B arm, when an A/B test chose the model


def put(payload: Payload, ttl_s: int) -> None:
    """Store a payload (overwrites one with the same job id)."""
    fields: dict[str, str | bytes | int] = {
        "model_id": payload.model_id,
        "user_id": payload.user_id or "",
        "input_hash": payload.input_hash,
        "created_at": payload.created_at.isoformat(),
        "data": payload.data,
        "api_key_name": payload.api_key_name or "",
        "variant": payload.variant or "",
    }
    _store(payload.job_id, fields, ttl_s)


def _store(job_id: str, fields: dict[str, str | bytes | int], ttl_s: int) -> None:
    """Write a payload's fields and its TTL in one transaction."""
    key = payload_key(job_id)
    with get_redis().pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, ttl_s)
        pipe.execute()


def fetch(job_id: str) -> Payload | None:
    """The payload of `job_id`, or None once it is gone (ended, purged or expired)."""
    raw: dict[bytes, bytes] = get_redis().hgetall(payload_key(job_id))  # type: ignore[assignment]
    if not raw or b"data" not in raw:
        return None
    return Payload(
        job_id=job_id,
        model_id=int(raw[b"model_id"]),
        user_id=raw[b"user_id"].decode() or None,
        input_hash=raw[b"input_hash"].decode(),
        created_at=datetime.fromisoformat(raw[b"created_at"].decode()),
        data=raw[b"data"],
        # Absent from payloads stored before the field existed.
        api_key_name=raw.get(b"api_key_name", b"").decode() or None,
        variant=raw.get(b"variant", b"").decode() or None,
    )


@dataclass(frozen=True)
class RoutePayload:
    """What the producer hands the worker for one routing job: the query (which lives only
    here, in Redis, until the job ends), an optional image and the decision made at submission."""

    job_id: str
    query: str
    decision: dict[str, Any]
    user_id: str | None
    input_hash: str
    created_at: datetime
    image: bytes | None = None
    api_key_name: str | None = None


def put_route(payload: RoutePayload, ttl_s: int) -> None:
    fields: dict[str, str | bytes | int] = {
        "kind": "route",
        "query": payload.query,
        "decision": json.dumps(payload.decision),
        "user_id": payload.user_id or "",
        "input_hash": payload.input_hash,
        "created_at": payload.created_at.isoformat(),
        "image": payload.image or b"",
        "api_key_name": payload.api_key_name or "",
    }
    _store(payload.job_id, fields, ttl_s)


def fetch_route(job_id: str) -> RoutePayload | None:
    """The routing payload of `job_id`, or None once it is gone."""
    raw: dict[bytes, bytes] = get_redis().hgetall(payload_key(job_id))  # type: ignore[assignment]
    if raw.get(b"kind") != b"route":
        return None
    return RoutePayload(
        job_id=job_id,
        query=raw[b"query"].decode(),
        decision=json.loads(raw[b"decision"]),
        user_id=raw[b"user_id"].decode() or None,
        input_hash=raw[b"input_hash"].decode(),
        created_at=datetime.fromisoformat(raw[b"created_at"].decode()),
        image=raw[b"image"] or None,
        api_key_name=raw[b"api_key_name"].decode() or None,
    )


def delete(*job_ids: str) -> None:
    """Drop the payloads of ended jobs."""
    if job_ids:
        get_redis().delete(*(payload_key(job_id) for job_id in job_ids))
