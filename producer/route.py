"""The Python API for routing queries: submit one as a routing job, or only ask where it would go.

from producer.route import submit_route, decide_route
outcome, decision = submit_route("Bu göğüs röntgeninde pnömoni var mı?", image=png_bytes, user_id="42")
decision = decide_route("Merhaba")
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError
from sqlmodel import Session, col, select

from onnxq import payloads
from onnxq.errors import IdempotencyConflict, OnnxqError, RetryableError
from onnxq.images import image_limits, inspect_image
from onnxq.settings import get_settings
from producer.client import (
    Sender,
    SubmitOutcome,
    accept_job,
    check_queue_depth,
    check_text,
    database_error,
)
from schema.abtests import ROUTE, ROUTER, cached_running_test
from schema.audit import input_hash
from schema.db import get_engine
from schema.jobs import idempotency_scope, new_job_id
from schema.tables import Job, RouteLog, utcnow
from workers.routing import cooldown
from workers.routing.config import get_router_config
from workers.routing.decide import decide, estimated_cost, tier_of

log = logging.getLogger(__name__)


def check_query(query: str) -> None:
    """`validation_error` for a query that is empty, too long or holds a NUL character."""
    limit = get_settings().max_query_chars
    if not query.strip():
        raise OnnxqError("query: must not be empty.", code="validation_error")
    if len(query) > limit:
        raise OnnxqError(f"query: at most {limit} characters (ONNXQ_MAX_QUERY_CHARS).", code="validation_error")
    if "\x00" in query:
        raise OnnxqError("query: must not contain NUL characters.", code="validation_error")


def decide_route(query: str, *, user_id: str | None = None, backend: str | None = None) -> dict[str, Any]:
    """The routing decision for `query`, at once: no job, no backend call (the seed's
    `router.route()`). Backends cooling down after failures are passed over, as a job would;
    a running routing A/B test splits the medium queries."""
    check_query(query)
    try:
        test = cached_running_test(ROUTER, ROUTE)
    except SQLAlchemyError as exc:
        # Without the database no routing job can be recorded, but a decision can still be
        # given: by the configured split.
        log.warning("routing A/B tests unknown (database: %s); using the configured split", type(exc).__name__)
        test = None
    decision = decide(
        query,
        get_router_config(),
        get_settings().audit_key_bytes(),
        user_id=user_id,
        backend=backend,
        available=cooldown.available,
        test=test,
    )
    return decision.as_dict()


def submit_route(
    query: str,
    *,
    image: bytes | None = None,
    user_id: str | None = None,
    backend: str | None = None,
    idempotency_key: str | None = None,
    api_key_name: str | None = None,
    actor: Sender | None = None,
) -> tuple[SubmitOutcome, dict[str, Any]]:
    """Decide where `query` goes, record a `route` job and enqueue it; returns the accepted job
    and the decision. The query is kept only in the job's Redis payload until the job ends; SQL
    gets its keyed hash. Errors as `submit_inference`'s."""
    if actor is None:
        from workers.actors import run_route  # imports the broker; kept out of module import

        actor = run_route
    settings = get_settings()
    check_text(user_id=user_id, idempotency_key=idempotency_key)
    if image is not None:
        inspect_image(image, **image_limits())
    decision = decide_route(query, user_id=user_id, backend=backend)
    digest = input_hash(settings.audit_key_bytes(), query.encode())
    scope = idempotency_scope(user_id, idempotency_key, api_key_name) if idempotency_key else None
    try:
        check_queue_depth("routing")
        job = Job(
            id=new_job_id(),
            kind="route",
            user_id=user_id,
            input_hash=digest,
            idempotency_key=idempotency_key,
            idempotency_scope=scope,
            api_key_name=api_key_name,
            created_at=utcnow(),
            ab_test_id=decision["ab_test_id"],
            variant=decision["variant"] if decision["ab_test_id"] is not None else None,
        )
        payload = payloads.RoutePayload(
            job.id, query, decision, user_id, digest, job.created_at, image=image, api_key_name=api_key_name
        )
        outcome = accept_job(
            job,
            store_payload=lambda: payloads.put_route(payload, settings.payload_ttl_s),
            actor=actor,
            reuse=lambda existing: _reuse(existing, digest),
            label=decision["backend"],
        )
        if outcome.reused:
            # The job an idempotency key names was decided when it was submitted.
            decision = _stored_decision(outcome.job_id, decision)
    except redis.RedisError as exc:
        raise RetryableError("The queue (Redis) is unavailable; try again shortly.") from exc
    except (OperationalError, ProgrammingError) as exc:
        raise database_error(exc) from exc
    return outcome, decision


def _stored_decision(job_id: str, fresh: dict[str, Any]) -> dict[str, Any]:
    """The decision the job was submitted with: from its payload, its result, or (a job that
    failed) its route log, the classification recomputed; `fresh` only for a job that has none
    of them left (its input expired before it ran)."""
    payload = payloads.fetch_route(job_id)
    if payload is not None:
        return payload.decision
    with Session(get_engine()) as session:
        job = session.get(Job, job_id)
        logged = session.exec(select(RouteLog).where(col(RouteLog.job_id) == job_id)).first()
    stored = (job.result or {}).get("decision") if job is not None else None
    if isinstance(stored, dict):
        return stored
    if job is None or logged is None:
        return fresh
    config = get_router_config()
    backend = logged.decided_backend
    known = backend in config.backends
    return {
        **fresh,
        "backend": backend,
        "tier": tier_of(config, backend) if known else fresh["tier"],
        "reason": logged.reason,
        "variant": logged.variant,
        "ab_test_id": job.ab_test_id,
        "estimated_cost": estimated_cost(config, backend, fresh["classification"]["word_count"])
        if known
        else fresh["estimated_cost"],
    }


def _reuse(existing: Job, digest: str) -> SubmitOutcome:
    if existing.kind != "route" or existing.input_hash != digest:
        raise IdempotencyConflict(
            "This idempotency key was already used for a different request; use a new key for a new request."
        )
    return SubmitOutcome(existing.id, existing.status, "", reused=True)
