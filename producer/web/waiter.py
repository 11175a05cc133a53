"""Waiting for jobs to end inside the web process, without a thread per waiting request.

One `JobWaiter` per process subscribes to the workers' job-ended channel (`onnxq.notify`) and
wakes the requests waiting on those jobs; each then re-reads its job from the database. The
database stays the only source of truth: a waiter also re-reads it every `poll_s` seconds, so a
lost notification or a Redis outage only makes the answer slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError

from onnxq.notify import ended_channel
from onnxq.settings import get_settings
from producer.client import get_job
from schema.tables import TERMINAL_STATUSES

log = logging.getLogger(__name__)

FALLBACK_POLL_S = 1.0
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 10.0


class JobWaiter:
    """Wakes coroutines waiting for jobs when the workers announce those jobs ended."""

    def __init__(
        self,
        redis_url: str,
        channel: str,
        *,
        poll_s: float = FALLBACK_POLL_S,
        read: Callable[[str], dict[str, Any]] = get_job,
    ) -> None:
        self.redis_url = redis_url
        self.channel = channel
        self.poll_s = poll_s
        self._read = read
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None
        # Set while the subscription is live (tests wait on it before publishing).
        self.subscribed = asyncio.Event()

    @property
    def pending(self) -> int:
        """How many jobs have someone waiting on them."""
        return len(self._waiting)

    def start(self) -> None:
        """Start listening in the background; returns at once, even if Redis is down."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="onnxq-job-waiter")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def wait(
        self, job_id: str, timeout_s: float, *, gone: Callable[[], Awaitable[bool]] | None = None
    ) -> dict[str, Any] | None:
        """The job's view once it has ended, or its latest view after `timeout_s` (or as soon as
        `gone()` says nobody is listening for the answer any more). None if the database could
        not be read at all meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        event = asyncio.Event()
        self._waiting.setdefault(job_id, set()).add(event)
        view: dict[str, Any] | None = None
        try:
            while True:
                # Cleared before the read: a notification arriving during it is not lost.
                event.clear()
                try:
                    view = await run_in_threadpool(self._read, job_id)
                except OperationalError:
                    # The job is committed; a database blip should not lose the caller its id.
                    log.warning("could not read job %s while waiting for it; retrying", job_id)
                remaining = deadline - loop.time()
                if (view is not None and view["status"] in TERMINAL_STATUSES) or remaining <= 0:
                    return view
                if gone is not None and await gone():
                    return view
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(self.poll_s, remaining))
        finally:
            events = self._waiting.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[job_id]

    def _wake(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            for event in self._waiting.get(job_id, ()):
                event.set()

    def _wake_all(self) -> None:
        self._wake(list(self._waiting))

    async def _listen(self) -> None:
        backoff_s = RECONNECT_MIN_S
        while True:
            client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=5)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.subscribed.set()
                    backoff_s = RECONNECT_MIN_S
                    # Jobs may have ended while we were not subscribed: let every waiter look.
                    self._wake_all()
                    async for message in pubsub.listen():
                        data = message.get("data")
                        if isinstance(data, bytes):
                            self._wake(data.decode("ascii", "replace").split())
            except (RedisError, OSError):
                log.warning("job-ended subscription lost; waiters poll every %.0f s until it is back", self.poll_s)
            except Exception:
                # Never let the listener die: waiters would silently fall back to polling.
                log.exception("job-ended listener failed; restarting it")
            finally:
                self.subscribed.clear()
                await client.aclose()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)


def waiter_for(app: FastAPI) -> JobWaiter:
    """The app's waiter; a polling-only one when the app's lifespan did not run (e.g. a
    TestClient used outside `with`)."""
    waiter = getattr(app.state, "waiter", None)
    if isinstance(waiter, JobWaiter):
        return waiter
    return JobWaiter(get_settings().redis_url, ended_channel())


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run one listening waiter for the life of the app."""
    waiter = JobWaiter(get_settings().redis_url, ended_channel())
    waiter.start()
    app.state.waiter = waiter
    try:
        yield
    finally:
        await waiter.stop()
        del app.state.waiter
