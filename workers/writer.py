"""The batch writer: one thread per worker process that commits what the batchers produce.

The batcher thread hands each finished batch to the writer and goes straight back to
`session.run`, so batch N+1 runs while batch N commits. Writes that queue up behind a slow commit
are done together in one transaction (group commit). It reuses `MicroBatcher`: a batch of writes,
gathered without waiting, is one transaction.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

import redis

from onnxq import notify, payloads
from schema.audit import lock_chain
from schema.db import session_scope
from schema.jobs import BatchOutcome, finish_batches, mark_running
from workers.batcher import MicroBatcher

log = logging.getLogger(__name__)

MAX_WRITES_PER_TRANSACTION = 32


@dataclass(frozen=True)
class Write:
    """One unit of work for the writer: jobs that started running, or a batch that finished."""

    running: dict[str, datetime] | None = None
    finished: BatchOutcome | None = None


class BatchWriter:
    """Commits `Write`s in order, grouping whatever is waiting into one transaction."""

    def __init__(self, audit_key: bytes) -> None:
        self.audit_key = audit_key
        self._batcher: MicroBatcher[Write, set[str]] = MicroBatcher(
            self._write_group, max_batch_size=MAX_WRITES_PER_TRANSACTION, max_wait_ms=0, name="batch-writer"
        )

    def start(self) -> None:
        self._batcher.start()

    def stop(self) -> None:
        """Commit what is queued, then stop."""
        self._batcher.stop()

    def mark_running(self, started: dict[str, datetime]) -> None:
        """Record that these jobs started (fire and forget: the batch's result write follows)."""
        self._batcher.submit(Write(running=started))

    def finish(self, outcome: BatchOutcome) -> Future[set[str]]:
        """Queue a batch's results; the future resolves once they are committed, with the ids of
        jobs that had already ended (redeliveries) and were left alone."""
        return self._batcher.submit(Write(finished=outcome))

    def _write_group(self, writes: list[Write]) -> list[set[str]]:
        finished = [w.finished for w in writes if w.finished is not None]
        try:
            with session_scope() as session:
                # Chain lock first (see finish_batches); then the starts, so a job whose start
                # and end share this transaction still gets its started_at before it ends.
                head = lock_chain(session) if finished else None
                for write in writes:
                    if write.running:
                        mark_running(session, write.running)
                ended = finish_batches(session, self.audit_key, finished, head) if finished else set()
        except Exception:
            self._save_starts(writes)
            raise
        done = [job_id for outcome in finished for job_id in outcome.job_ids]
        try:
            payloads.delete(*done)
        except redis.RedisError:
            # The jobs are committed; their payloads expire on their TTL instead.
            log.warning("could not delete %d payloads of ended jobs; they will expire", len(done))
        notify.publish_ended(done)
        return [ended if w.finished is not None else set() for w in writes]

    @staticmethod
    def _save_starts(writes: list[Write]) -> None:
        """After a failed group, still record the starts (and attempt counts) on their own."""
        starts = [w.running for w in writes if w.running]
        if not starts:
            return
        try:
            with session_scope() as session:
                for started in starts:
                    mark_running(session, started)
        except Exception:
            log.warning("could not record the start of %d batches", len(starts), exc_info=True)
