"""End to end over a live port: a real uvicorn (`onnxq api`) on loopback, a real worker process,
the test Redis and database, driven by the Python HTTP client (`OnnxqClient`)."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onnxq.stack import StackError, free_port, wait_for_web
from producer.http_client import ClientError, OnnxqClient
from producer.keys import create_key
from tests.conftest import REPO
from tests.helpers import (
    DEMO,
    audit_rows,
    log_tail,
    spawn_onnxq,
    start_worker_process,
    stop_worker_process,
    wait_for_consumer,
    worker_env,
)

pytestmark = pytest.mark.slow

KEY_NAME = "e2e-upstream"
WAIT_S = 60.0
POLL_S = 0.1


def spawn_api(log_path: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """`python -m onnxq api` on loopback `port`, logging to `log_path`."""
    process: subprocess.Popen[bytes] = spawn_onnxq(["api", "--host", "127.0.0.1", "--port", str(port)], log_path, env)
    return process


def start_api(log_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """The web process on a free loopback port, once it answers /health; the process and its URL."""
    port = free_port()
    process = spawn_api(log_path, env, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_web(url, process, str(log_path))
    except StackError as exc:
        stop_worker_process(process)
        raise AssertionError(f"{exc}\n{log_tail(log_path)}") from None
    return process, url


@pytest.fixture()
def stack(migrated: str, tmp_path: Path) -> Iterator[str]:
    """A worker process and a web process on this test's database and Redis; the web URL."""
    env = worker_env()
    since_ms = int(time.time() * 1000)
    worker = start_worker_process(tmp_path / "worker.log", env, threads=8)
    try:
        wait_for_consumer(worker, tmp_path / "worker.log", since_ms)
        api, url = start_api(tmp_path / "api.log", env)
        try:
            yield url
        finally:
            stop_worker_process(api)
    finally:
        stop_worker_process(worker)


@pytest.fixture()
def client(stack: str) -> Iterator[OnnxqClient]:
    with OnnxqClient(stack, api_key=create_key(KEY_NAME).secret) as http:
        yield http


def expected_label(path: Path) -> str:
    """The class a sample shows, from its name (`covid-19_1.jpg` → `covid-19`), lower case."""
    return path.name.rsplit("_", 1)[0].lower()


def assert_classified(view: dict[str, Any], sample: Path) -> None:
    assert view["status"] == "succeeded", view
    result = view["result"]
    assert result["prediction"].lower() == expected_label(sample)
    probabilities = result["probabilities"]
    assert set(probabilities) == {"COVID-19", "Pneumonia", "Normal"}
    assert math.isclose(sum(probabilities.values()), 1.0, rel_tol=1e-4)
    assert max(probabilities, key=probabilities.__getitem__) == result["prediction"]
    assert result["confidence"] == probabilities[result["prediction"]]


def test_submit_poll_result_and_audit_row(client: OnnxqClient, samples: list[Path]) -> None:
    # Given a healthy stack that lists the demo model
    assert client.health()["status"] == "ok"
    assert DEMO in [model["model_name"] for model in client.models()]
    # When one image is uploaded (multipart) and its job polled until it ends
    job_id = client.submit(samples[0], DEMO, user_id="u-e2e", idempotency_key="scan-1")
    views = client.wait([job_id], timeout_s=WAIT_S, poll_s=POLL_S)
    # Then it is classified as the sample's class, with consistent probabilities
    assert_classified(views[job_id], samples[0])
    assert client.job(job_id) == views[job_id]
    # And exactly one audit row records it, under the API key's name, with no image in it
    rows = audit_rows([job_id])
    assert len(rows) == 1
    assert rows[0].api_key_name == KEY_NAME
    assert rows[0].user_id == "u-e2e"
    assert len(rows[0].input_hash) == 64
    # And submitting the same idempotency key again answers the same job
    assert client.submit(samples[0], DEMO, user_id="u-e2e", idempotency_key="scan-1") == job_id
    assert len(audit_rows([job_id])) == 1


def test_batch_with_a_bad_image_and_feedback(client: OnnxqClient, samples: list[Path]) -> None:
    # Given a batch whose middle entry is not an image
    good = [samples[1], samples[2]]
    entries = client.submit_batch([good[0], b"this is not an image", good[1].read_bytes()], DEMO)
    # Then that entry alone is refused, in place, and the others are queued
    assert [entry["index"] for entry in entries] == [0, 1, 2]
    assert entries[1] == {"index": 1, "error": entries[1]["error"]}
    assert entries[1]["error"]["code"] == "not_an_image"
    ids = [entries[0]["job_id"], entries[2]["job_id"]]
    assert all(entry["status"] == "queued" for entry in (entries[0], entries[2]))
    views = client.wait(ids, timeout_s=WAIT_S, poll_s=POLL_S)
    for job_id, sample in zip(ids, good, strict=True):
        assert_classified(views[job_id], sample)
    assert {row.job_id for row in audit_rows(ids)} == set(ids)
    # When the ground truth comes back for a job
    truth = views[ids[0]]["result"]["prediction"]
    recorded = client.feedback(ids[0], truth)
    # Then it is recorded against the prediction; an unknown label is refused
    assert recorded == {"job_id": ids[0], "label": truth, "prediction": truth, "correct": True}
    with pytest.raises(ClientError) as refused:
        client.feedback(ids[0], "Fracture")
    assert (refused.value.status, refused.value.code) == (422, "unknown_label")


def test_errors_carry_the_server_code(client: OnnxqClient, stack: str, samples: list[Path]) -> None:
    # An unknown job, an unknown model, a bad key, no key: the server's status and code
    with pytest.raises(ClientError) as unknown_job:
        client.job("0" * 32)
    assert (unknown_job.value.status, unknown_job.value.code) == (404, "job_not_found")
    with pytest.raises(ClientError) as unknown_model:
        client.submit(samples[0], "no-such-model")
    assert (unknown_model.value.status, unknown_model.value.code) == (404, "unknown_model")
    with OnnxqClient(stack, api_key="onnxq_not-a-key") as stranger, pytest.raises(ClientError) as bad_key:
        stranger.models()
    assert (bad_key.value.status, bad_key.value.code) == (401, "unauthorized")
    with OnnxqClient(stack) as anonymous, pytest.raises(ClientError) as no_key:
        anonymous.job("0" * 32)
    assert no_key.value.status == 401
    # And nothing listening is a clear error, not an httpx exception
    with OnnxqClient(f"http://127.0.0.1:{free_port()}") as nowhere, pytest.raises(ClientError) as down:
        nowhere.health()
    assert (down.value.status, down.value.code) == (None, "connection_failed")
    assert "Could not reach onnxq" in down.value.message


def test_wait_sits_out_a_503_for_its_retry_after(stack: str, samples: list[Path], tmp_path: Path) -> None:
    # Given a finished job, and a second web process whose Redis is not running yet: its
    # per-key rate limit needs Redis, so every request gets 503 with Retry-After
    # (a job is visible only to the key that submitted it: the same key on both processes)
    key = create_key("e2e-late").secret
    with OnnxqClient(stack, api_key=key) as first:
        job_id = first.submit(samples[3], DEMO)
        assert first.wait([job_id], timeout_s=WAIT_S, poll_s=POLL_S)[job_id]["status"] == "succeeded"
    socket_path = tmp_path / "late-redis" / "redis.sock"
    socket_path.parent.mkdir()
    log_path = tmp_path / "api-late.log"
    port = free_port()
    late = spawn_api(log_path, worker_env(REDIS_URL=f"unix://{socket_path}"), port)
    redis_server: subprocess.Popen[bytes] | None = None
    try:
        with OnnxqClient(f"http://127.0.0.1:{port}", api_key=key) as late_client:
            _wait_until_503(late_client, late, log_path)
            # When a wait starts while it answers 503, and Redis comes up meanwhile
            outcome: dict[str, Any] = {}

            def wait_for_job() -> None:
                try:
                    outcome["views"] = late_client.wait([job_id], timeout_s=WAIT_S, poll_s=POLL_S)
                except ClientError as exc:
                    outcome["error"] = exc

            waiter = threading.Thread(target=wait_for_job)
            waiter.start()
            _wait_for_log(log_path, f'"GET /v1/jobs/{job_id} HTTP/1.1" 503', late)
            redis_server = _start_redis(socket_path)
            waiter.join(WAIT_S)
            # Then the wait retried after Retry-After instead of failing, and got the job
            assert not waiter.is_alive()
            assert "error" not in outcome, outcome
            assert outcome["views"][job_id]["status"] == "succeeded"
            assert f'"GET /v1/jobs/{job_id} HTTP/1.1" 200' in log_path.read_text()
    finally:
        stop_worker_process(late)
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait()


def _wait_until_503(client: OnnxqClient, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until the web process answers, and answers a protected route with 503 + Retry-After."""
    deadline = time.monotonic() + WAIT_S
    while True:
        assert process.poll() is None, log_tail(log_path)
        assert time.monotonic() < deadline, log_tail(log_path)
        try:
            client.models()
        except ClientError as exc:
            if exc.status == 503:
                assert exc.retry_after_s is not None and exc.retry_after_s > 0
                return
            assert exc.code == "connection_failed", exc
        time.sleep(0.1)


def _wait_for_log(log_path: Path, line: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while line not in log_path.read_text():
        assert process.poll() is None, log_tail(log_path)
        assert time.monotonic() < deadline, f"{line!r} not logged:\n{log_tail(log_path)}"
        time.sleep(0.05)


def _start_redis(socket_path: Path) -> subprocess.Popen[bytes]:
    from onnxq.stack import redis_server_binary

    config = ["--port", "0", "--unixsocket", str(socket_path), "--save", "", "--dir", str(socket_path.parent)]
    return subprocess.Popen([redis_server_binary(), *config], stdout=subprocess.DEVNULL)


def test_demo_classifies_the_samples_over_http(tmp_path: Path, samples: list[Path]) -> None:
    # Given a fresh data dir and no REDIS_URL or DATABASE_URL (embedded Redis, SQLite), as `make demo`
    env = {k: v for k, v in worker_env().items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["ONNXQ_DATA_DIR"] = str(tmp_path / "data")
    # and the demo model's two versions (the demo runs an A/B test between them)
    models = tmp_path / "models" / "chest-xray-classifier-demo"
    models.mkdir(parents=True)
    for version in ("1", "2"):
        (models / version).symlink_to(REPO / "onnx" / "chest-xray-classifier-demo" / version)
    env["ONNXQ_MODEL_DIR"] = str(models.parent)
    # When the demo runs twice (its API key is rotated, not refused, the second time)
    for run in (1, 2):
        demo = subprocess.run(
            [sys.executable, "-m", "onnxq", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        # Then every sample is classified as its class and the audit chain holds both runs
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        rows = [line for line in demo.stdout.splitlines() if "succeeded" in line]
        assert len(rows) == len(samples)
        for row in rows:
            cells = [cell.strip() for cell in row.strip("│ ").split("│")]
            assert cells[3].lower() == expected_label(Path(cells[0]))
        assert f"audit chain: OK, {len(samples) * run} rows" in demo.stdout
        assert f"submitted {len(samples)} jobs to http://127.0.0.1:" in demo.stderr
        # And today's metrics, computed by hand, count both runs with their feedback (every sample
        # is labelled by its name, and the model gets them all right)
        lines = [line for line in demo.stdout.splitlines() if "│ chest-xray-classifier-demo@" in line]
        cells = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in lines]
        assert sum(int(row[2]) for row in cells) == len(samples) * run and {row[3] for row in cells} == {"0"}
        assert sum(int(row[-1].split("(")[1].rstrip(")")) for row in cells) == len(samples) * run
        assert {row[-1].split(" ")[0] for row in cells} == {"100.0%"}
        # And an A/B test between the two versions, closed with its verdict (same network: no winner)
        assert "closed: no significant difference" in demo.stdout
        with sqlite3.connect(tmp_path / "data" / "onnxq.db") as db:
            assert db.execute("SELECT count(*) FROM pytorch_ab_tests WHERE status = 'running'").fetchone() == (0,)
            if run == 1:
                # (as if this run had been interrupted before closing its test: the next one closes it)
                db.execute("UPDATE pytorch_ab_tests SET status = 'running', closed_at = NULL")
    # And the images went in over HTTP, in the web process's log of its own
    web_log = (tmp_path / "data" / "demo-web.log").read_text()
    assert web_log.count('"POST /v1/jobs/inference HTTP/1.1" 202') == 2 * len(samples)
    assert web_log.count('/feedback HTTP/1.1" 200') == 2 * len(samples)
