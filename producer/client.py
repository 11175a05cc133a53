"""The Python API for upstream code: submit inference jobs, read them, wait for them.

from producer import submit_inference, get_job
outcome = submit_inference(image_bytes, model="chest-xray-classifier-demo", user_id="u1")
job = get_job(outcome.job_id)      # the job shape of DESIGN.md
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlmodel import Session, col, select

from onnxq import payloads
from onnxq.errors import (
    DatabaseNotReady,
    IdempotencyConflict,
    JobNotFound,
    OnnxqError,
    Overloaded,
    RetryableError,
    UnknownLabel,
)
from onnxq.images import image_limits, inspect_image
from onnxq.payloads import get_redis
from onnxq.settings import get_settings
from onnxq.split import variant_for
from schema.abtests import cached_running_test
from schema.audit import input_hash
from schema.db import get_engine, session_scope
from schema.jobs import find_by_scope, idempotency_scope, job_view, new_job_id
from schema.registry import cached_model, split_ref
from schema.tables import TERMINAL_STATUSES, Job, PytorchModel, utcnow

WAIT_POLL_S = 0.05
QUEUE_FULL_RETRY_AFTER_S = 5


class Sender(Protocol):
    """A Dramatiq actor, as far as the producer uses one."""

    def send(self, *args: Any) -> Any: ...


@dataclass(frozen=True)
class SubmitOutcome:
    """An accepted job: its id, its status, and whether an idempotency key returned an old one."""

    job_id: str
    status: str
    model: str
    reused: bool = False


def submit_inference(
    data: bytes,
    model: str,
    *,
    user_id: str | None = None,
    idempotency_key: str | None = None,
    api_key_name: str | None = None,
    actor: Sender | None = None,
    check_depth: bool = True,
) -> SubmitOutcome:
    """Validate an image cheaply, record the job, store its payload and enqueue it.

    Raises a `PermanentError` (with a stable code) for bad input or an unknown/inactive model,
    before anything is enqueued; `RetryableError` when Redis or the database is down, or
    `queue_full` when more than `ONNXQ_MAX_QUEUE_DEPTH` jobs wait (skip that check with
    `check_depth=False` when the caller just made it). `actor` is the Dramatiq actor that runs
    the job (the micro-batched `run_inference` unless a benchmark says otherwise).
    """
    if actor is None:
        from workers.actors import run_inference  # imports the broker; kept out of module import

        actor = run_inference
    settings = get_settings()
    check_text(model=model, user_id=user_id, idempotency_key=idempotency_key)
    inspect_image(data, **image_limits())
    scope = idempotency_scope(user_id, idempotency_key, api_key_name) if idempotency_key else None
    digest = input_hash(settings.audit_key_bytes(), data)
    try:
        job_id = new_job_id()
        # Sticky per user; a job without a user by its idempotency scope (so a retry lands on
        # the same arm), else by its own id.
        arm = ab_arm(model, user_id or scope or job_id)
        registered = cached_model(arm[2] if arm else model)
        assert registered.id is not None
        model_id = registered.id
        if check_depth:
            check_queue_depth()
        job = Job(
            id=job_id,
            kind="inference",
            model_id=model_id,
            user_id=user_id,
            input_hash=digest,
            idempotency_key=idempotency_key,
            idempotency_scope=scope,
            api_key_name=api_key_name,
            created_at=utcnow(),
            ab_test_id=arm[0] if arm else None,
            variant=arm[1] if arm else None,
        )
        payload = payloads.Payload(job.id, model_id, user_id, digest, job.created_at, data, api_key_name, job.variant)
        return accept_job(
            job,
            store_payload=lambda: payloads.put(payload, settings.payload_ttl_s),
            actor=actor,
            reuse=lambda existing: _reuse(existing, registered, digest),
            label=registered.ref,
        )
    except redis.RedisError as exc:
        raise RetryableError("The queue (Redis) is unavailable; try again shortly.") from exc
    except (OperationalError, ProgrammingError) as exc:
        raise database_error(exc) from exc


def ab_arm(model: str, subject: str) -> tuple[int, str, str] | None:
    """(test id, arm, NAME@VERSION) when a running A/B test splits the jobs of `model`; a
    reference with an explicit @version is never split."""
    name, version = split_ref(model)
    test = cached_running_test(name) if version is None else None
    if test is None:
        return None
    variant = variant_for(get_settings().audit_key_bytes(), test.name, test.split_percent, subject)
    return test.id, variant, test.arm_a if variant == "A" else test.arm_b


def accept_job(
    job: Job,
    *,
    store_payload: Callable[[], None],
    actor: Sender,
    reuse: Callable[[Job], SubmitOutcome],
    label: str,
) -> SubmitOutcome:
    """Record a validated job, store its payload and enqueue it, in the order that loses nothing.

    A job whose idempotency scope already names one returns `reuse(existing)` instead (also when
    a concurrent request wins the race). Redis and database errors propagate to the caller.
    """
    if job.idempotency_scope is not None:
        with Session(get_engine()) as session:
            existing = find_by_scope(session, job.idempotency_scope)
        if existing is not None:
            return reuse(existing)
    store_payload()
    try:
        # A Core insert: the ORM's unit of work costs more than the statement here.
        with get_engine().begin() as connection:
            connection.execute(insert(Job), job.model_dump())
    except IntegrityError:
        # Another request with the same idempotency key won the race: return its job.
        payloads.delete(job.id)
        with Session(get_engine()) as session:
            existing = find_by_scope(session, job.idempotency_scope or "")
        if existing is None:
            raise
        return reuse(existing)
    try:
        actor.send(job.id)
    except redis.RedisError as exc:
        # Not accepted after all: remove the row, so a retry with the same idempotency key
        # makes a new job instead of finding this one.
        with session_scope() as session:
            session.execute(delete(Job).where(col(Job.id) == job.id))
        with contextlib.suppress(redis.RedisError):
            payloads.delete(job.id)
        raise RetryableError("The queue (Redis) is unavailable; try again shortly.") from exc
    return SubmitOutcome(job.id, job.status, label)


TEXT_LIMITS = {"model": 260, "user_id": 200, "idempotency_key": 200}


def check_text(**fields: str | None) -> None:
    """`validation_error` for an identifier the database cannot store as given: too long, or
    holding a NUL character (PostgreSQL text cannot)."""
    for name, value in fields.items():
        if value is None:
            continue
        if "\x00" in value:
            raise OnnxqError(f"{name}: must not contain NUL characters.", code="validation_error")
        if len(value) > TEXT_LIMITS[name]:
            raise OnnxqError(f"{name}: at most {TEXT_LIMITS[name]} characters.", code="validation_error")


def check_queue_depth(queue: str = "inference") -> None:
    """`queue_full` (with a `Retry-After`) when more messages wait in `queue` than
    `ONNXQ_MAX_QUEUE_DEPTH`: new work is refused before its input is put in Redis."""
    settings = get_settings()
    if settings.max_queue_depth <= 0:
        return
    try:
        depth = queue_depth(queue)
    except redis.RedisError as exc:
        raise RetryableError("The queue (Redis) is unavailable; try again shortly.") from exc
    if depth >= settings.max_queue_depth:
        raise Overloaded(
            f"The queue holds {depth} jobs (limit {settings.max_queue_depth}); retry shortly.",
            code="queue_full",
            retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
        )


def queue_depth(queue: str = "inference") -> int:
    """Messages waiting in a Dramatiq queue (not yet taken by a worker)."""
    settings = get_settings()
    return int(get_redis().llen(f"{settings.redis_namespace}-dramatiq:{queue}"))


def _reuse(existing: Job, model: PytorchModel, digest: str) -> SubmitOutcome:
    """The job an idempotency key already names, if the request is the same one."""
    if existing.input_hash != digest or existing.model_id != model.id:
        raise IdempotencyConflict(
            "This idempotency key was already used with a different image or model; use a new key for a new request."
        )
    return SubmitOutcome(existing.id, existing.status, model.ref, reused=True)


def database_error(exc: Exception) -> OnnxqError:
    """A user-facing error for a failed database call: not migrated, or unavailable for now."""
    text = str(exc).lower()
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return DatabaseNotReady(
            "The database has no onnxq tables: run `onnxq db upgrade` (and check DATABASE_URL / ONNXQ_DATA_DIR "
            "point where you expect)."
        )
    return RetryableError("The database is unavailable; try again shortly.")


JOB_ID_LENGTH = 32
MIN_JOB_PREFIX = 8


def match_job_prefix(prefix: str) -> str:
    """The one job id starting with `prefix` (at least 8 characters), for people typing ids."""
    if len(prefix) < MIN_JOB_PREFIX or not all(c in "0123456789abcdef" for c in prefix):
        raise JobNotFound(
            f"{prefix!r} is not a job id: give the id submit printed, or at least its first 8 characters."
        )
    with Session(get_engine()) as session:
        found = session.exec(select(Job.id).where(col(Job.id).startswith(prefix)).limit(2)).all()
    if len(found) != 1:
        raise JobNotFound(
            f"No job id starts with {prefix!r}." if not found else f"Several job ids start with {prefix!r}; give more."
        )
    return found[0]


def record_feedback(job_id: str, label: str, *, api_key_name: str | None = None) -> dict[str, Any]:
    """Store the ground truth for a job; `unknown_label` unless it is one of the model's labels,
    `job_not_found` if (given `api_key_name`) another API key submitted it. Returns what was
    recorded, with whether the job's prediction matched."""
    try:
        with session_scope() as session:
            job = _owned_job(session, job_id, api_key_name, lock=True)
            model = session.get(PytorchModel, job.model_id) if job.model_id is not None else None
            if model is None or label not in model.labels:
                known = ", ".join(model.labels) if model is not None else "none"
                raise UnknownLabel(f"{label!r} is not a label of this job's model (labels: {known}).")
            job.feedback_label = label
            job.feedback_at = utcnow()
            session.add(job)
            prediction = (job.result or {}).get("prediction")
    except (OperationalError, ProgrammingError) as exc:
        raise database_error(exc) from exc
    return {
        "job_id": job_id,
        "label": label,
        "prediction": prediction,
        "correct": None if prediction is None else prediction == label,
    }


def get_job(job_id: str, *, api_key_name: str | None = None) -> dict[str, Any]:
    """The job shape for `job_id`; `JobNotFound` for an id onnxq never accepted, or (given
    `api_key_name`) one that another API key submitted."""
    with Session(get_engine()) as session:
        return job_view(_owned_job(session, job_id, api_key_name))


def _owned_job(session: Session, job_id: str, api_key_name: str | None, *, lock: bool = False) -> Job:
    job = session.get(Job, job_id, with_for_update=lock)
    # Another key's job is answered exactly like a missing one: its existence is not revealed.
    if job is None or (api_key_name is not None and job.api_key_name != api_key_name):
        raise JobNotFound(f"No job has id {job_id!r}.")
    return job


def wait_for_jobs(
    job_ids: Iterable[str], *, timeout_s: float, on_poll: Callable[[int], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Poll until every job has ended or `timeout_s` passes; returns the latest view of each.

    `on_poll` is told, after each poll, how many of the jobs have ended (for progress bars).
    """
    ids = list(dict.fromkeys(job_ids))
    views: dict[str, dict[str, Any]] = {}
    pending = set(ids)
    deadline = time.monotonic() + timeout_s
    while True:
        with Session(get_engine()) as session:
            for job in session.exec(select(Job).where(col(Job.id).in_(pending))):
                views[job.id] = job_view(job)
        missing = [job_id for job_id in ids if job_id not in views]
        if missing:
            raise JobNotFound(f"No job has id {missing[0]!r}.")
        pending = {job_id for job_id in pending if views[job_id]["status"] not in TERMINAL_STATUSES}
        if on_poll is not None:
            on_poll(len(ids) - len(pending))
        if not pending or time.monotonic() >= deadline:
            return {job_id: views[job_id] for job_id in ids}
        time.sleep(WAIT_POLL_S)
