"""The micro-batcher: gathers items from many threads into batches for one handler call.

Small and generic on purpose: it knows nothing of ONNX, SQL or Dramatiq. A handler takes a list of
payloads and returns one result per payload, in order; the batcher hands each caller its own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


@dataclass
class Pending(Generic[P, R]):
    """One submitted payload and the future its caller waits on."""

    payload: P
    future: Future[R] = field(default_factory=Future)


class BatcherStopped(RuntimeError):
    """Raised to callers that submit after `stop()`."""


class BatchSizeMismatch(RuntimeError):
    """The handler returned a different number of results than it was given payloads."""


def collect_batch(
    inbox: queue.Queue[Pending[P, R] | None],
    *,
    max_batch_size: int,
    max_wait_s: float,
    first_timeout_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[Pending[P, R]], bool]:
    """Take up to `max_batch_size` live items, waiting at most `max_wait_s` after the first.

    Returns the batch and whether a stop sentinel (None) was seen. Items whose future was
    cancelled (their caller gave up) are dropped.
    """
    batch: list[Pending[P, R]] = []
    stop = False
    try:
        first = inbox.get(timeout=first_timeout_s)
    except queue.Empty:
        return batch, stop
    if first is None:
        return batch, True
    if first.future.set_running_or_notify_cancel():
        batch.append(first)
    deadline = clock() + max_wait_s
    while len(batch) < max_batch_size:
        remaining = deadline - clock()
        try:
            item = inbox.get(timeout=remaining) if remaining > 0 else inbox.get_nowait()
        except queue.Empty:
            break
        if item is None:
            stop = True
            break
        if item.future.set_running_or_notify_cancel():
            batch.append(item)
    return batch, stop


def settle(batch: Sequence[Pending[P, R]], handler: Callable[[list[P]], Sequence[R]]) -> None:
    """Run the handler on a batch and resolve every future: its result, or the batch's error."""
    try:
        results = handler([item.payload for item in batch])
        if len(results) != len(batch):
            raise BatchSizeMismatch(f"handler returned {len(results)} results for {len(batch)} items")
    except BaseException as exc:
        for item in batch:
            item.future.set_exception(exc)
        if not isinstance(exc, Exception):
            raise
        return
    for item, result in zip(batch, results, strict=True):
        item.future.set_result(result)


class MicroBatcher(Generic[P, R]):
    """A thread that turns `submit()` calls into `handler(batch)` calls.

    `max_batch_size` caps a batch; `max_wait_ms` caps how long the first item of a batch waits
    for company. `stop()` lets the batch in hand finish, then fails what is left.
    """

    def __init__(
        self,
        handler: Callable[[list[P]], Sequence[R]],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.handler = handler
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._inbox: queue.Queue[Pending[P, R] | None] = queue.Queue()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, payload: P) -> Future[R]:
        """Queue one payload; the future resolves when its batch has been handled."""
        if self._stopped.is_set():
            raise BatcherStopped("the batcher is stopped")
        pending: Pending[P, R] = Pending(payload)
        self._inbox.put(pending)
        return pending.future

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish the batch in hand, fail anything still queued, and join the thread."""
        self._stopped.set()
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BatcherStopped("the batcher stopped before this item ran"))

    def _run(self) -> None:
        while True:
            batch, stop = collect_batch(self._inbox, max_batch_size=self.max_batch_size, max_wait_s=self.max_wait_s)
            if batch:
                settle(batch, self.handler)
            if stop:
                return
