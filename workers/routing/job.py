"""One routing job from payload to committed result: mark it running, execute the decision
with fallback, then write the job's result and its route log in one transaction."""

from __future__ import annotations

import logging
import time
from typing import Any

from onnxq.errors import OnnxqError
from onnxq.payloads import RoutePayload
from onnxq.settings import get_settings
from schema.audit import input_hash
from schema.db import session_scope
from schema.jobs import AUDITED_RESULT_KEYS, mark_running
from schema.routes import finish_route
from schema.tables import TERMINAL_STATUSES, Job, utcnow
from workers.routing.config import RouterConfig, get_router_config
from workers.routing.decide import estimated_cost
from workers.routing.execute import RouteOutcome, execute

log = logging.getLogger(__name__)
FALLBACK_REASON_MAX = 300  # the column's size


def run_routing_job(payload: RoutePayload) -> None:
    """Execute `payload`'s decision and record the outcome (idempotent per job id).

    A job that already ended (its message redelivered after the commit) is not run again: that
    would pay the remote backend twice. A worker killed between a backend's answer and the
    commit does run it again on redelivery; nothing short of a two-phase commit with the API
    could avoid that.
    """
    config = get_router_config()
    decision = payload.decision
    with session_scope() as session:
        job = session.get(Job, payload.job_id)
        if job is None or job.status in TERMINAL_STATUSES:
            return
        mark_running(session, {payload.job_id: utcnow()})
    outcome: RouteOutcome | None = None
    error: OnnxqError | None = None
    started = time.perf_counter()
    try:
        outcome = execute(config, decision["backend"], payload.query, payload.image)
    except OnnxqError as exc:
        error = exc
    total_ms = round((time.perf_counter() - started) * 1000, 3)
    row = route_log(config, payload, outcome, total_ms)
    key = get_settings().audit_key_bytes()
    audit = (key, audit_row(key, payload, outcome)) if outcome is not None and outcome.served.model_id else None
    with session_scope() as session:
        written = finish_route(
            session,
            payload.job_id,
            row,
            result=None if outcome is None else result(decision, outcome),
            error=error,
            audit=audit,
        )
    if written:
        log.info(
            "route job %s: %s → %s%s",
            payload.job_id,
            decision["backend"],
            outcome.served.backend if outcome else "nobody",
            " (fallback)" if outcome and outcome.fallback_used else "",
        )


def result(decision: dict[str, Any], outcome: RouteOutcome) -> dict[str, Any]:
    """The job's result: the decision, who really answered, the answer and what it cost."""
    served = outcome.served
    body: dict[str, Any] = {
        "decision": decision,
        "served_by": served.backend,
        "served_tier": served.tier,
        "fallback_used": outcome.fallback_used,
        "fallback_reason": outcome.fallback_reason,
        "answer": served.answer,
        "cost": served.cost,
        "latency_ms": served.latency_ms,
        "details": served.details,
    }
    if served.prompt_tokens is not None:
        body["tokens"] = {"prompt": served.prompt_tokens, "completion": served.completion_tokens}
    return body


def route_log(
    config: RouterConfig, payload: RoutePayload, outcome: RouteOutcome | None, total_ms: float
) -> dict[str, Any]:
    """The route log row: the decision, the outcome, the cost, the all-remote baseline (the
    remote tier's first backend for this query, or the actual cost if the remote tier served),
    and how long the whole execution took (`total_ms`)."""
    decision = payload.decision
    classification = decision["classification"]
    baseline = estimated_cost(config, config.routing.remote[0], classification["word_count"])
    served = outcome.served if outcome is not None else None
    return {
        "user_id": payload.user_id,
        "api_key_name": payload.api_key_name,
        "input_hash": payload.input_hash,
        "score": classification["score"],
        "complexity": classification["complexity"],
        "reason": decision["reason"],
        "variant": decision["variant"],
        "decided_backend": decision["backend"],
        "served_by": served.backend if served else None,
        "served_tier": served.tier if served else None,
        "fallback_used": bool(outcome and outcome.fallback_used),
        "fallback_reason": outcome.fallback_reason[:FALLBACK_REASON_MAX]
        if outcome and outcome.fallback_reason
        else None,
        "cost": served.cost if served else 0.0,
        "all_remote_cost": served.cost if served and served.tier == "remote" else (baseline if served else 0.0),
        "latency_ms": served.latency_ms if served else None,
        "total_ms": total_ms,
        "prompt_tokens": served.prompt_tokens if served else None,
        "completion_tokens": served.completion_tokens if served else None,
    }


def audit_row(key: bytes, payload: RoutePayload, outcome: RouteOutcome) -> dict[str, Any]:
    """The chained audit row of a routing job whose image a registered model classified: the
    same row an inference job gets (the image's keyed hash, never the image)."""
    served = outcome.served
    assert payload.image is not None and served.model_id is not None
    details = served.details
    return {
        "model_id": served.model_id,
        "user_id": payload.user_id,
        "input_hash": input_hash(key, payload.image),
        "inference_time_ms": served.latency_ms,
        "confidence": details["confidence"],
        "result": {k: details[k] for k in AUDITED_RESULT_KEYS},
        "batch_size": 1,
        "api_key_name": payload.api_key_name,
    }
