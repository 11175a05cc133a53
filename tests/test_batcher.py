"""The micro-batcher alone: size cap, deadline, cancelled items, result count, shared errors."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future

import pytest

from workers.batcher import BatcherStopped, BatchSizeMismatch, MicroBatcher, Pending, collect_batch, settle


def _inbox(*payloads: int) -> queue.Queue[Pending[int, int] | None]:
    inbox: queue.Queue[Pending[int, int] | None] = queue.Queue()
    for p in payloads:
        inbox.put(Pending(p))
    return inbox


def test_collect_stops_at_max_batch_size() -> None:
    inbox = _inbox(*range(10))
    batch, stop = collect_batch(inbox, max_batch_size=4, max_wait_s=1.0)
    assert [item.payload for item in batch] == [0, 1, 2, 3]
    assert not stop
    assert inbox.qsize() == 6


def test_collect_waits_at_most_max_wait_after_first() -> None:
    # Given a fake clock that jumps past the deadline after the first item
    ticks = iter([0.0, 10.0, 10.0, 10.0])
    inbox = _inbox(1)
    threading.Timer(0.05, lambda: inbox.put(Pending(2))).start()
    batch, _ = collect_batch(inbox, max_batch_size=8, max_wait_s=0.005, clock=lambda: next(ticks))
    # Then the batch closes with only the item that was there
    assert [item.payload for item in batch] == [1]


def test_collect_drops_cancelled_items() -> None:
    inbox = _inbox(1, 2, 3)
    cancelled = Pending(99)
    cancelled.future.cancel()
    inbox.queue.insert(1, cancelled)
    batch, _ = collect_batch(inbox, max_batch_size=8, max_wait_s=0.0)
    assert [item.payload for item in batch] == [1, 2, 3]


def test_collect_sees_stop_sentinel() -> None:
    inbox = _inbox(1)
    inbox.put(None)
    batch, stop = collect_batch(inbox, max_batch_size=8, max_wait_s=1.0)
    assert [item.payload for item in batch] == [1]
    assert stop


def test_settle_hands_each_caller_its_result() -> None:
    batch = [Pending(p) for p in (1, 2, 3)]
    settle(batch, lambda xs: [x * 10 for x in xs])
    assert [item.future.result() for item in batch] == [10, 20, 30]


def test_settle_checks_result_count() -> None:
    batch = [Pending(p) for p in (1, 2, 3)]
    settle(batch, lambda xs: xs[:2])
    for item in batch:
        with pytest.raises(BatchSizeMismatch):
            item.future.result()


def test_settle_sends_one_error_to_every_item() -> None:
    def boom(xs: list[int]) -> list[int]:
        raise ValueError("model exploded")

    batch = [Pending(p) for p in (1, 2)]
    settle(batch, boom)
    for item in batch:
        with pytest.raises(ValueError, match="exploded"):
            item.future.result()


def test_batches_form_under_concurrent_load() -> None:
    sizes: list[int] = []

    def handler(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        time.sleep(0.01)
        return [x + 1 for x in xs]

    batcher: MicroBatcher[int, int] = MicroBatcher(handler, max_batch_size=8, max_wait_ms=20)
    batcher.start()
    futures: list[Future[int]] = []
    lock = threading.Lock()

    def client(x: int) -> None:
        fut = batcher.submit(x)
        with lock:
            futures.append(fut)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(f.result(timeout=5) for f in futures) == list(range(1, 65))
    batcher.stop()
    assert max(sizes) > 1
    assert max(sizes) <= 8
    assert sum(sizes) == 64


def test_stop_finishes_batch_in_hand_and_refuses_new_work() -> None:
    started = threading.Event()

    def slow(xs: list[int]) -> list[int]:
        started.set()
        time.sleep(0.1)
        return xs

    batcher: MicroBatcher[int, int] = MicroBatcher(slow, max_batch_size=1, max_wait_ms=0)
    batcher.start()
    first = batcher.submit(1)
    started.wait(2)
    batcher.stop()
    assert first.result(timeout=1) == 1
    with pytest.raises(BatcherStopped):
        batcher.submit(2)
