"""The HTTP API in process (FastAPI's TestClient drives the ASGI app; no live port)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from producer.web.app import create_app
from tests.corpus import corpus
from tests.helpers import DEMO, wait_all


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_json_and_multipart_submissions_are_classified(client: TestClient, worker: object, samples: list[Path]) -> None:
    # Given one image as base64 JSON, one as a data URL, one as multipart
    first = client.post("/v1/jobs/inference", json={"model": DEMO, "image": _b64(samples[0])})
    data_url = client.post(
        "/v1/jobs/inference", json={"model": DEMO, "image": "data:image/png;base64," + _b64(samples[1])}
    )
    upload = client.post(
        "/v1/jobs/inference", files={"file": samples[2].open("rb")}, data={"model": DEMO, "user_id": "u9"}
    )
    # Then each is accepted with a Location to poll
    for answer in (first, data_url, upload):
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "queued"
        assert answer.headers["location"] == f"/v1/jobs/{answer.json()['job_id']}"
    ids = [answer.json()["job_id"] for answer in (first, data_url, upload)]
    wait_all(ids)
    for job_id in ids:
        job = client.get(f"/v1/jobs/{job_id}")
        assert job.status_code == 200
        assert job.json()["status"] == "succeeded"
        assert job.json()["result"]["prediction"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": DEMO, "image": "not base64!!"}, 400, "invalid_base64"),
        ({"model": DEMO}, 422, "validation_error"),
        ({"model": "no-such-model", "image": base64.b64encode(corpus()["good.png"][0]).decode()}, 404, "unknown_model"),
        ({"model": DEMO, "image": base64.b64encode(corpus()["text.png"][0]).decode()}, 415, "not_an_image"),
        ({"model": DEMO, "image": base64.b64encode(corpus()["bomb.png"][0]).decode()}, 422, "image_too_many_pixels"),
        ({"model": DEMO, "image": base64.b64encode(corpus()["tiny.png"][0]).decode()}, 422, "image_too_small"),
    ],
)
def test_errors_have_codes_and_statuses(client: TestClient, body: dict[str, str], status: int, code: str) -> None:
    answer = client.post("/v1/jobs/inference", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert answer.json()["error"]["message"]


def test_malformed_oversized_and_unsupported_bodies(client: TestClient) -> None:
    bad_json = client.post("/v1/jobs/inference", content=b"{not json", headers={"content-type": "application/json"})
    assert (bad_json.status_code, bad_json.json()["error"]["code"]) == (400, "bad_request")
    huge = client.post(
        "/v1/jobs/inference", content=b"x" * (15 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert (huge.status_code, huge.json()["error"]["code"]) == (413, "input_too_large")
    text = client.post("/v1/jobs/inference", content=b"hello", headers={"content-type": "text/plain"})
    assert (text.status_code, text.json()["error"]["code"]) == (415, "unsupported_media_type")
    big_upload = client.post(
        "/v1/jobs/inference",
        files={"file": ("big.png", b"\x89PNG" + b"\x00" * (11 * 1024 * 1024))},
        data={"model": DEMO},
    )
    assert (big_upload.status_code, big_upload.json()["error"]["code"]) == (413, "input_too_large")


def test_unknown_job_is_404_and_idempotency_conflict_is_409(client: TestClient, samples: list[Path]) -> None:
    missing = client.get("/v1/jobs/" + "0" * 32)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "job_not_found")
    body = {"model": DEMO, "image": _b64(samples[0]), "user_id": "u", "idempotency_key": "k"}
    first = client.post("/v1/jobs/inference", json=body)
    again = client.post("/v1/jobs/inference", json=body)
    assert first.json()["job_id"] == again.json()["job_id"]
    conflict = client.post("/v1/jobs/inference", json={**body, "image": _b64(samples[1])})
    assert (conflict.status_code, conflict.json()["error"]["code"]) == (409, "idempotency_conflict")


def test_models_and_health(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert [m["model_name"] for m in models] == [DEMO]
    assert models[0]["labels"] == ["COVID-19", "Pneumonia", "Normal"]
    for path in ("/health", "/api/health"):
        health = client.get(path)
        assert health.status_code == 200, health.text
        assert {name: check["ok"] for name, check in health.json()["checks"].items()} == {
            "redis": True,
            "database": True,
            "models": True,
        }


def test_health_is_503_when_the_database_is_not_migrated(env: str) -> None:
    with TestClient(create_app()) as client:
        health = client.get("/health")
        submitted = client.post(
            "/v1/jobs/inference", json={"model": DEMO, "image": "aGk="}, headers={"X-API-Key": "onnxq_anything"}
        )
    assert health.status_code == 503
    assert health.json()["checks"]["database"]["ok"] is False
    # A request that needs the database says what to do, with a Retry-After.
    assert submitted.status_code == 503, submitted.text
    assert submitted.json()["error"]["code"] == "database_not_migrated"
    assert "onnxq db upgrade" in submitted.json()["error"]["message"]
    assert submitted.headers["retry-after"]
