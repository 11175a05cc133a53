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
from onnxq.settings import get_settings
from producer.client import submit_inference
from schema.db import session_scope
from schema.jobs import BatchOutcome, finish_batches
from workers.actors import prepare
from workers.broker import broker

log = logging.getLogger(__name__)

NAIVE_QUEUE = "bench-naive"


@dramatiq.actor(queue_name=NAIVE_QUEUE, max_retries=0, broker=broker)
def naive_inference(job_id: str) -> None:
    """Benchmark baseline: one payload, one `session.run` of batch 1, one commit per message."""
    # The same fetch and preprocessing as the real actor; the runtime's session is reused (loaded
    # once per process, as any sane first attempt would) but its micro-batcher is bypassed.
    prepared = prepare(job_id)
    if prepared is None:
        return
    runner, item = prepared
    tensor = item.tensor
    started = time.perf_counter()
    probs = runner.loaded.run(tensor[None])[0]
    run_ms = (time.perf_counter() - started) * 1000
    success = runner.result_for(probs, item, 1, run_ms)
    with session_scope() as session:
        finish_batches(session, get_settings().audit_key_bytes(), [BatchOutcome(runner.model_id, [success])])
    payloads.delete(job_id)


def submit_naive(data: bytes, model: str, *, user_id: str | None = None) -> str:
    """Submit a job for `naive_inference`: the same producer steps (and cost) as any job."""
    return submit_inference(data, model, user_id=user_id, actor=naive_inference).job_id
