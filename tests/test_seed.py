"""The seed-compatible endpoint `POST /api/pytorch/inference` and the job waiter behind it."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlmodel import Session

from onnxq.errors import ImageDecodeError
from onnxq.notify import ended_channel, publish_ended
from onnxq.settings import get_settings
from producer.client import get_job, submit_inference
from producer.web.waiter import JobWaiter
from schema.db import get_engine, session_scope
from schema.jobs import fail_job
from schema.tables import Job
from tests.corpus import corpus
from tests.helpers import DEMO, audit_rows, wait_all

ROUTE = "/api/pytorch/inference"
PERCENTAGE = re.compile(r"^\d{1,3}\.\d{2}%$")


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_seed_request_gets_the_seed_response(client: TestClient, worker: object, samples: list[Path]) -> None:
    # Given the seed's exact request body
    png = next(path for path in samples if path.suffix == ".png")
    answer = client.post(ROUTE, json={"model_name": DEMO, "image": _data_url(png)})

    # Then it is classified in the seed's shape, plus the job id
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"success", "prediction", "confidence", "probabilities", "performance", "job_id"}
    assert body["success"] is True
    probabilities = body["probabilities"]
    assert set(probabilities) == {"COVID-19", "Normal", "Pneumonia"}
    for entry in probabilities.values():
        assert set(entry) == {"probability", "percentage"}
        assert PERCENTAGE.match(entry["percentage"]), entry
        assert abs(float(entry["percentage"][:-1]) - entry["probability"] * 100) < 0.01
    assert sum(entry["probability"] for entry in probabilities.values()) == pytest.approx(1, abs=1e-3)
    assert body["prediction"] == max(probabilities, key=lambda label: probabilities[label]["probability"])
    assert body["confidence"] == probabilities[body["prediction"]]["percentage"]
    performance = body["performance"]
    assert set(performance) == {"preprocessing_ms", "inference_ms", "total_ms"}
    assert all(isinstance(value, int) and value >= 0 for value in performance.values())

    # And the job and its audit row are recorded under the caller's key
    job = get_job(body["job_id"])
    assert job["status"] == "succeeded"
    assert job["result"]["prediction"] == body["prediction"]
    rows = audit_rows([body["job_id"]])
    assert len(rows) == 1
    assert rows[0].api_key_name == "tests"
    # And the request left nothing waiting behind it
    assert client.app.state.waiter.pending == 0  # type: ignore[attr-defined]


def test_user_id_is_recorded(client: TestClient, worker: object, samples: list[Path]) -> None:
    answer = client.post(ROUTE, json={"model_name": DEMO, "image": _data_url(samples[0]), "user_id": "u42"})
    assert answer.status_code == 200, answer.text
    assert [row.user_id for row in audit_rows([answer.json()["job_id"]])] == ["u42"]


def test_no_answer_in_time_gives_the_job_id_to_poll(
    client: TestClient, samples: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no worker running and a short synchronous wait
    monkeypatch.setenv("ONNXQ_SYNC_WAIT_S", "0.3")
    get_settings.cache_clear()

    answer = client.post(ROUTE, json={"model_name": DEMO, "image": _data_url(samples[0])})

    # Then it answers 202 with the job to poll
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    assert answer.json() == {"success": False, "job_id": job_id, "status": "queued"}
    assert answer.headers["location"] == f"/v1/jobs/{job_id}"
    polled = client.get(answer.headers["location"])
    assert polled.status_code == 200
    assert polled.json()["status"] == "queued"


def test_a_failed_job_answers_its_error(client: TestClient, worker: object) -> None:
    # Given an image whose header passes the producer's checks but which cannot be decoded
    truncated, code = corpus()["truncated.jpg"]
    image = base64.b64encode(truncated).decode()

    answer = client.post(ROUTE, json={"model_name": DEMO, "image": image})

    # Then the job's error comes back with its status and the job id
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert set(body) == {"success", "error", "job_id"}
    assert body["success"] is False
    assert body["error"]["code"] == code == "image_decode_failed"
    assert body["error"]["message"]
    assert get_job(body["job_id"])["status"] == "failed"


GOOD_PNG = base64.b64encode(corpus()["good.png"][0]).decode()


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "bad_request"),
        (b'{"model_name": "chest-xray-classifier-demo", "image": "not base64!!"}', 400, "invalid_base64"),
        (b'{"model_name": "chest-xray-classifier-demo"}', 422, "validation_error"),
        (f'{{"model": "{DEMO}", "image": "{GOOD_PNG}"}}'.encode(), 422, "validation_error"),
        (f'{{"model_name": "no-such-model", "image": "{GOOD_PNG}"}}'.encode(), 404, "unknown_model"),
        (b'{"model_name": "chest-xray-classifier-demo", "image": "aGVsbG8gd29ybGQ="}', 415, "not_an_image"),
    ],
)
def test_bad_requests_answer_in_the_error_shape(client: TestClient, content: bytes, status: int, code: str) -> None:
    answer = client.post(ROUTE, content=content, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"}
    assert answer.json()["error"]["code"] == code
    assert answer.json()["error"]["message"]


def test_other_content_types_and_missing_keys_are_refused(client: TestClient) -> None:
    text = client.post(ROUTE, content=b"hello", headers={"content-type": "text/plain"})
    assert (text.status_code, text.json()["error"]["code"]) == (415, "unsupported_media_type")
    anonymous = client.post(ROUTE, json={"model_name": DEMO, "image": GOOD_PNG}, headers={"Authorization": ""})
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "unauthorized")


def test_openapi_describes_the_endpoint(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"][ROUTE]["post"]
    request_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(request_schema["required"]) == {"model_name", "image"}
    assert "user_id" in request_schema["properties"]
    schemas = document["components"]["schemas"]

    def fields(status: str) -> set[str]:
        reference = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        return set(schemas[reference.rsplit("/", 1)[1]]["properties"])

    assert fields("200") == {"success", "prediction", "confidence", "probabilities", "performance", "job_id"}
    assert fields("202") == {"success", "job_id", "status"}
    for status in ("400", "401", "404", "413", "415", "422", "429", "503"):
        assert {"error", "job_id"} <= fields(status)


# --- The waiter: woken by the workers' notifications, with polling only as a fallback ----------


def _queued_job(samples: list[Path]) -> str:
    """A job accepted and left queued (no worker runs in these tests)."""
    return submit_inference(samples[0].read_bytes(), DEMO).job_id


def _fail(job_id: str) -> None:
    """End the job as a worker would, without announcing it."""
    with session_scope() as session:
        fail_job(session, job_id, ImageDecodeError("stand-in failure"))


class CountingRead:
    """`get_job`, noting each read so a test knows the waiter has looked at least once."""

    def __init__(self) -> None:
        self.first_read = threading.Event()

    def __call__(self, job_id: str) -> dict[str, Any]:
        view = get_job(job_id)
        self.first_read.set()
        return view


def test_a_notification_wakes_the_waiter(migrated: str, samples: list[Path]) -> None:
    job_id = _queued_job(samples)
    read = CountingRead()

    async def scenario() -> dict[str, Any] | None:
        # Given a waiter that would not poll again within the test's wait
        waiter = JobWaiter(get_settings().redis_url, ended_channel(), poll_s=3600, read=read)
        waiter.start()
        try:
            await asyncio.wait_for(waiter.subscribed.wait(), 30)
            waiting = asyncio.create_task(waiter.wait(job_id, timeout_s=3600))
            assert await asyncio.to_thread(read.first_read.wait, 30)
            # When a worker ends the job and announces it
            await asyncio.to_thread(_fail, job_id)
            await asyncio.to_thread(publish_ended, [job_id])
            # (bounded: the waiter itself would wait an hour for its next look)
            view = await asyncio.wait_for(waiting, 30)
            assert waiter.pending == 0
            return view
        finally:
            await waiter.stop()

    # Then the waiter sees it ended (without the notification it would still be waiting: the bounded wait fails)
    view = asyncio.run(scenario())
    assert view is not None
    assert view["status"] == "failed"


def test_without_redis_the_waiter_polls(migrated: str, samples: list[Path]) -> None:
    job_id = _queued_job(samples)
    read = CountingRead()

    async def scenario() -> dict[str, Any] | None:
        # Given a waiter whose Redis is down (nothing listens on port 1)
        waiter = JobWaiter("redis://127.0.0.1:1/0", ended_channel(), poll_s=0.1, read=read)
        waiter.start()
        try:
            waiting = asyncio.create_task(waiter.wait(job_id, timeout_s=3600))
            assert await asyncio.to_thread(read.first_read.wait, 30)
            # When the job ends with no announcement at all
            await asyncio.to_thread(_fail, job_id)
            return await asyncio.wait_for(waiting, 30)
        finally:
            await waiter.stop()

    # Then the fallback poll still finds it ended
    view = asyncio.run(scenario())
    assert view is not None
    assert view["status"] == "failed"


def test_waiters_are_forgotten_on_timeout_and_cancellation(migrated: str, samples: list[Path]) -> None:
    job_id = _queued_job(samples)
    read = CountingRead()

    async def scenario() -> None:
        waiter = JobWaiter(get_settings().redis_url, ended_channel(), poll_s=0.05, read=read)
        # A wait that runs out returns the job as it last saw it
        timed_out = await waiter.wait(job_id, timeout_s=0.1)
        assert timed_out is not None
        assert timed_out["status"] == "queued"
        assert waiter.pending == 0

        # A wait whose client has gone returns without waiting out its timeout
        async def gone() -> bool:
            return True

        left = await waiter.wait(job_id, timeout_s=3600, gone=gone)
        assert left is not None
        assert left["status"] == "queued"
        assert waiter.pending == 0
        # A wait cancelled under it (the request's task ended) leaves nothing behind
        read.first_read.clear()
        waiting = asyncio.create_task(waiter.wait(job_id, timeout_s=30))
        await asyncio.to_thread(read.first_read.wait, 30)
        assert waiter.pending == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert waiter.pending == 0

    asyncio.run(scenario())
    with Session(get_engine()) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status == "queued"


def test_workers_announce_the_jobs_they_end(
    migrated: str, worker: object, samples: list[Path], redis_client: redis.Redis
) -> None:
    # Given a subscriber on the job-ended channel
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(ended_channel())
    # When one job succeeds (the batch writer) and one fails while it is decoded (the actor)
    good = submit_inference(samples[0].read_bytes(), DEMO).job_id
    bad = submit_inference(corpus()["truncated.jpg"][0], DEMO).job_id
    views = wait_all([good, bad])
    assert [views[good]["status"], views[bad]["status"]] == ["succeeded", "failed"]
    # Then both were announced
    announced: set[str] = set()
    deadline = time.monotonic() + 30
    while {good, bad} - announced and time.monotonic() < deadline:
        # None also for the subscribe confirmation, which get_message swallows.
        message = pubsub.get_message(timeout=1)
        if message is not None:
            announced.update(message["data"].decode().split())
    pubsub.close()
    assert {good, bad} <= announced
