"""Who may use the HTTP API and how much: API keys, the per-key rate limit, queue backpressure,
and what happens when Redis is gone; plus batch submissions and job feedback."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from onnxq.cli import app as cli
from onnxq.payloads import payload_key
from producer.keys import clear_key_cache, create_key
from producer.web.app import create_app
from schema.audit import verify_chain
from schema.db import get_engine, session_scope
from schema.registry import clear_model_cache
from schema.tables import ApiKey, Job, PytorchModel
from tests.conftest import AUDIT_KEY
from tests.corpus import corpus
from tests.helpers import DEMO, audit_rows, wait_all

runner = CliRunner()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture()
def anonymous(migrated: str) -> Iterator[TestClient]:
    """A client that sends no key."""
    with TestClient(create_app()) as client:
        yield client


def _with_key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error(answer: Any) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]["code"]


def test_keys_are_required_and_checked(anonymous: TestClient, samples: list[Path]) -> None:
    body = {"model": DEMO, "image": _b64(samples[0])}
    # Given no key, a wrong key, a valid key in either header, and a revoked key
    assert _error(anonymous.post("/v1/jobs/inference", json=body)) == (401, "unauthorized")
    assert _error(anonymous.get("/v1/models", headers=_with_key("onnxq_wrong"))) == (401, "unauthorized")
    key = create_key("upstream").secret
    assert anonymous.post("/v1/jobs/inference", json=body, headers=_with_key(key)).status_code == 202
    assert anonymous.get("/v1/models", headers={"X-API-Key": key}).status_code == 200
    assert runner.invoke(cli, ["keys", "revoke", "upstream"]).exit_code == 0
    clear_key_cache()  # other processes see the revocation within KEY_CACHE_TTL_S
    assert _error(anonymous.get("/v1/models", headers=_with_key(key))) == (403, "key_revoked")
    # Health stays open for load balancers
    assert anonymous.get("/health").status_code == 200


def test_keys_cli_shows_the_key_once_and_stores_only_its_hash(migrated: str) -> None:
    created = runner.invoke(cli, ["keys", "create", "billing"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("onnxq_") and len(key) > 40
    with Session(get_engine()) as session:
        row = session.exec(select(ApiKey)).one()
    assert key not in str(row.model_dump()) and row.prefix == key[:12]
    listed = runner.invoke(cli, ["keys", "list"], terminal_width=200)
    assert "billing" in listed.stdout and key not in listed.stdout
    # A second active key of one name is refused; --replace rotates it
    again = runner.invoke(cli, ["keys", "create", "billing"])
    assert again.exit_code == 1 and "key_exists" in again.output
    rotated = runner.invoke(cli, ["keys", "create", "billing", "--replace"])
    assert rotated.exit_code == 0
    with Session(get_engine()) as session:
        rows = session.exec(select(ApiKey).order_by(col(ApiKey.id))).all()
    assert [r.revoked_at is not None for r in rows] == [True, False]
    assert runner.invoke(cli, ["keys", "revoke", "nobody"]).exit_code == 1
    assert runner.invoke(cli, ["keys", "create", "bad name!"]).exit_code == 1


def test_the_key_name_is_on_the_job_and_its_audit_row(
    anonymous: TestClient, worker: object, samples: list[Path]
) -> None:
    key = create_key("radiology-pacs").secret
    answer = anonymous.post(
        "/v1/jobs/inference", json={"model": DEMO, "image": _b64(samples[0])}, headers=_with_key(key)
    )
    job_id = answer.json()["job_id"]
    wait_all([job_id])
    with Session(get_engine()) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.api_key_name == "radiology-pacs"
        [row] = audit_rows([job_id])
        assert row.api_key_name == "radiology-pacs"
        # The key name is part of the chained hash: editing it breaks verification.
        assert verify_chain(session, AUDIT_KEY.encode()).ok
        session.execute(update(type(row)).where(col(type(row).id) == row.id).values(api_key_name="someone-else"))
        session.commit()
        assert not verify_chain(session, AUDIT_KEY.encode()).ok


def test_rate_limit_is_per_key_with_retry_after(migrated: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXQ_RATE_LIMIT_PER_MINUTE", "3")
    from onnxq.settings import get_settings

    get_settings.cache_clear()
    first, second = create_key("first").secret, create_key("second").secret
    with TestClient(create_app()) as client:
        answers = [client.get("/v1/models", headers=_with_key(first)) for _ in range(4)]
        other = client.get("/v1/models", headers=_with_key(second))
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[-1].json()["error"]["code"] == "rate_limited"
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 61
    assert other.status_code == 200


def test_a_full_queue_refuses_new_jobs_before_storing_them(
    migrated: str, monkeypatch: pytest.MonkeyPatch, samples: list[Path], redis_client: redis.Redis
) -> None:
    # Given a queue limit of 2 and no worker draining it
    monkeypatch.setenv("ONNXQ_MAX_QUEUE_DEPTH", "2")
    from onnxq.settings import get_settings

    get_settings.cache_clear()
    key = create_key("busy").secret
    with TestClient(create_app(), headers=_with_key(key)) as client:
        accepted = [client.post("/v1/jobs/inference", json={"model": DEMO, "image": _b64(p)}) for p in samples[:2]]
        refused = client.post("/v1/jobs/inference", json={"model": DEMO, "image": _b64(samples[2])})
        batch = client.post("/v1/jobs/inference:batch", json={"model": DEMO, "images": [{"image": _b64(samples[3])}]})
    assert [a.status_code for a in accepted] == [202, 202]
    # Then the third gets 429 queue_full with Retry-After, and nothing of it was stored
    assert _error(refused) == (429, "queue_full")
    assert int(refused.headers["retry-after"]) > 0
    assert _error(batch) == (429, "queue_full")
    assert len(redis_client.keys(payload_key("*"))) == 2
    with Session(get_engine()) as session:
        assert len(session.exec(select(Job)).all()) == 2


def test_redis_down_is_503_with_retry_after(
    migrated: str, monkeypatch: pytest.MonkeyPatch, samples: list[Path]
) -> None:
    monkeypatch.setenv("ONNXQ_API_AUTH", "false")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    from onnxq.payloads import get_redis
    from onnxq.settings import get_settings

    get_settings.cache_clear()
    get_redis.cache_clear()
    with TestClient(create_app()) as client:
        answer = client.post("/v1/jobs/inference", json={"model": DEMO, "image": _b64(samples[0])})
        health = client.get("/health")
    assert _error(answer) == (503, "service_unavailable")
    assert answer.headers["retry-after"]
    assert health.status_code == 503 and health.json()["checks"]["redis"]["ok"] is False


def test_an_inactive_model_is_409(anonymous: TestClient, samples: list[Path]) -> None:
    with session_scope() as session:
        session.execute(update(PytorchModel).values(deployment_status="inactive"))
    clear_model_cache()
    key = create_key("k").secret
    answer = anonymous.post(
        "/v1/jobs/inference", json={"model": DEMO, "image": _b64(samples[0])}, headers=_with_key(key)
    )
    assert _error(answer) == (409, "model_inactive")


def test_auth_can_be_off_only_on_loopback(migrated: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONNXQ_API_AUTH", "false")
    from onnxq.settings import get_settings

    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        assert client.get("/v1/models").status_code == 200
    refused = runner.invoke(cli, ["api", "--host", "0.0.0.0"])
    assert refused.exit_code == 2
    assert "loopback" in refused.output
    # However the app is served (plain uvicorn, say): a client from another host is refused.
    with TestClient(create_app(), client=("10.1.2.3", 40000)) as remote:
        assert _error(remote.get("/v1/models")) == (401, "unauthorized")
    with TestClient(create_app(), client=("127.0.0.1", 40000)) as local:
        assert local.get("/v1/models").status_code == 200


def test_batch_gives_one_entry_per_image_in_order(anonymous: TestClient, worker: object, samples: list[Path]) -> None:
    key = create_key("batcher").secret
    images = [
        {"image": _b64(samples[0])},
        {"image": "not base64!!"},
        {"image": base64.b64encode(corpus()["text.png"][0]).decode()},
        {"image": _b64(samples[1]), "idempotency_key": "b-1"},
    ]
    answer = anonymous.post(
        "/v1/jobs/inference:batch", json={"model": DEMO, "images": images, "user_id": "u"}, headers=_with_key(key)
    )
    assert answer.status_code == 202, answer.text
    entries = answer.json()["jobs"]
    assert [e["index"] for e in entries] == [0, 1, 2, 3]
    assert [e.get("error", {}).get("code") for e in entries] == [None, "invalid_base64", "not_an_image", None]
    assert set(entries[0]) == {"index", "job_id", "status"} and set(entries[1]) == {"index", "error"}
    views = wait_all([entries[0]["job_id"], entries[3]["job_id"]])
    assert {v["status"] for v in views.values()} == {"succeeded"}
    # Whole-request refusals: an unknown model, too many images, an empty list
    headers = _with_key(key)
    unknown = anonymous.post("/v1/jobs/inference:batch", json={"model": "nope", "images": images[:1]}, headers=headers)
    assert _error(unknown) == (404, "unknown_model")
    too_many = anonymous.post(
        "/v1/jobs/inference:batch", json={"model": DEMO, "images": images[:1] * 33}, headers=headers
    )
    assert _error(too_many) == (422, "validation_error")
    empty = anonymous.post("/v1/jobs/inference:batch", json={"model": DEMO, "images": []}, headers=headers)
    assert _error(empty) == (422, "validation_error")


def test_feedback_records_the_true_label(anonymous: TestClient, worker: object, samples: list[Path]) -> None:
    headers = _with_key(create_key("labeller").secret)
    job_id = anonymous.post(
        "/v1/jobs/inference", json={"model": DEMO, "image": _b64(samples[0])}, headers=headers
    ).json()["job_id"]
    prediction = wait_all([job_id])[job_id]["result"]["prediction"]
    other = next(label for label in ("COVID-19", "Pneumonia", "Normal") if label != prediction)
    right = anonymous.post(f"/v1/jobs/{job_id}/feedback", json={"label": prediction}, headers=headers)
    assert right.status_code == 200, right.text
    assert right.json() == {"job_id": job_id, "label": prediction, "prediction": prediction, "correct": True}
    wrong = anonymous.post(f"/v1/jobs/{job_id}/feedback", json={"label": other}, headers=headers)
    assert wrong.json()["correct"] is False
    with Session(get_engine()) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.feedback_label == other and job.feedback_at is not None
    unknown_label = anonymous.post(f"/v1/jobs/{job_id}/feedback", json={"label": "Flu"}, headers=headers)
    assert _error(unknown_label) == (422, "unknown_label")
    unknown_job = anonymous.post(f"/v1/jobs/{'0' * 32}/feedback", json={"label": prediction}, headers=headers)
    assert _error(unknown_job) == (404, "job_not_found")
    malformed = anonymous.post(
        f"/v1/jobs/{job_id}/feedback", content=b"{", headers={**headers, "content-type": "application/json"}
    )
    assert _error(malformed) == (400, "bad_request")


def test_one_key_never_sees_another_keys_jobs(anonymous: TestClient, samples: list[Path]) -> None:
    a, b = _with_key(create_key("tenant-a").secret), _with_key(create_key("tenant-b").secret)
    body = {"model": DEMO, "image": _b64(samples[0]), "idempotency_key": "1"}
    job_a = anonymous.post("/v1/jobs/inference", json=body, headers=a).json()["job_id"]
    # The same idempotency key from another tenant is a new job, never the other's
    same = anonymous.post("/v1/jobs/inference", json=body, headers=b)
    other_image = anonymous.post("/v1/jobs/inference", json={**body, "image": _b64(samples[1])}, headers=b)
    assert same.status_code == 202 and same.json()["job_id"] != job_a
    assert other_image.status_code == 409 and job_a not in other_image.text
    # Another tenant's job is answered exactly like a missing one
    assert _error(anonymous.get(f"/v1/jobs/{job_a}", headers=b)) == (404, "job_not_found")
    assert _error(anonymous.post(f"/v1/jobs/{job_a}/feedback", json={"label": "Normal"}, headers=b)) == (
        404,
        "job_not_found",
    )
    assert anonymous.get(f"/v1/jobs/{job_a}", headers=a).status_code == 200


def test_guessing_keys_is_rate_limited_per_client(anonymous: TestClient) -> None:
    from onnxq.settings import get_settings

    limit = get_settings().failed_auth_per_minute
    known = _with_key(create_key("known").secret)
    assert anonymous.get("/v1/models", headers=known).status_code == 200
    answers = [anonymous.get("/v1/models", headers=_with_key(f"onnxq_guess{i}")).status_code for i in range(limit + 1)]
    assert answers == [401] * limit + [429]
    # Until the window ends, a key this process has not seen is refused unchecked from that
    # address; a key it already knows still works (many clients may share a proxy's address).
    assert _error(anonymous.get("/v1/models", headers=_with_key(create_key("late").secret))) == (429, "rate_limited")
    assert anonymous.get("/v1/models", headers=known).status_code == 200
