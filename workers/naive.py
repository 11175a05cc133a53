"""The BENCHMARK BASELINE of `onnxq bench`: a naive, one-job-at-a-time inference actor.

NOT FOR PRODUCTION. This is the worker a user would write first, kept only so `onnxq bench` can
measure how much the micro-batched `workers.actors.run_inference` gains over it: per message it
fetches the payload, preprocesses, runs `session.run` on a batch of one and commits the job's
result and its audit row in a transaction of its own. No retries, no redelivery handling beyond
what `finish_batch` gives for free.

Run it as `dramatiq workers.naive --queues bench-naive --processes 1 --threads T` (the bench does).
"""

from __future__ import annotations

import logging
import time

import dramatiq

from onnxq import payloads
from onnxq.errors import PermanentError
from onnxq.settings import get_settings
from producer.client import submit_inference
from schema.db import session_scope
from schema.jobs import BatchOutcome, fail_job, finish_batches
from schema.tables import utcnow
from workers.broker import broker
from workers.inference import Prepared
from workers.preprocess import preprocess
from workers.runtime import get_runtime

log = logging.getLogger(__name__)

NAIVE_QUEUE = "bench-naive"


@dramatiq.actor(queue_name=NAIVE_QUEUE, max_retries=0, broker=broker)
def naive_inference(job_id: str) -> None:
    """Benchmark baseline: one payload, one `session.run` of batch 1, one commit per message."""
    settings = get_settings()
    picked_at = utcnow()
    payload = payloads.fetch(job_id)
    if payload is None:
        log.warning("naive bench job %s has no payload; dropped", job_id)
        return
    # The runtime's session is reused (loaded once per process, as any sane first attempt
    # would); its micro-batcher is bypassed on purpose.
    runner = get_runtime().runner(payload.model_id)
    started = time.perf_counter()
    try:
        tensor = preprocess(
            payload.data,
            runner.config.input,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            min_side_px=settings.min_image_side_px,
        )
    except PermanentError as error:
        with session_scope() as session:
            fail_job(session, job_id, error)
        payloads.delete(job_id)
        return
    preprocessing_ms = (time.perf_counter() - started) * 1000
    item = Prepared(
        job_id=job_id,
        user_id=payload.user_id,
        input_hash=payload.input_hash,
        picked_at=picked_at,
        tensor=tensor,
        preprocessing_ms=preprocessing_ms,
    )
    started = time.perf_counter()
    probs = runner.loaded.run(tensor[None])[0]
    run_ms = (time.perf_counter() - started) * 1000
    success = runner.result_for(probs, item, 1, run_ms)
    with session_scope() as session:
        finish_batches(session, settings.audit_key_bytes(), [BatchOutcome(runner.model_id, [success])])
    payloads.delete(job_id)


def submit_naive(data: bytes, model: str, *, user_id: str | None = None) -> str:
    """Submit a job for `naive_inference`: the same producer steps (and cost) as any job."""
    return submit_inference(data, model, user_id=user_id, actor=naive_inference).job_id
