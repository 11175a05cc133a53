"""Job-ended notifications: workers PUBLISH the ids of jobs they ended; web processes waiting on
those jobs (the seed-compatible endpoint) listen, so they need not poll the database.

A notification is only a hint to re-read the database: one that is lost costs a waiter at most
its fallback poll interval, never a wrong answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

from onnxq.payloads import get_redis
from onnxq.settings import get_settings

log = logging.getLogger(__name__)


def ended_channel() -> str:
    """The Redis pub/sub channel that carries the ids of ended jobs (space-separated)."""
    return f"{get_settings().redis_namespace}:jobs:ended"


def publish_ended(job_ids: Iterable[str]) -> None:
    """Announce that these jobs ended (after their rows are committed). Never raises: the jobs
    are already recorded, and waiters fall back to polling."""
    ids = " ".join(job_ids)
    if not ids:
        return
    try:
        get_redis().publish(ended_channel(), ids)
    except redis.RedisError:
        log.warning("could not announce %d ended jobs; waiters will poll for them", ids.count(" ") + 1)
