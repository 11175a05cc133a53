"""Prometheus metrics: the web process's `/metrics` (in process) and a real worker's exposition port."""

from __future__ import annotations

import base64
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from onnxq.payloads import get_redis
from onnxq.settings import get_settings
from producer.client import submit_inference
from tests.helpers import DEMO, log_tail, start_worker_process, stop_worker_process, wait_all, worker_env

DEMO_REF = f"{DEMO}@1"
JOBS = 5
SCRAPE_TIMEOUT_S = 60.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client: TestClient) -> Samples:
    """`GET /metrics` as Prometheus asks for it: without an API key."""
    answer = TestClient(client.app).get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


def test_web_metrics_count_requests_by_route_template_and_jobs_by_model(
    client: TestClient, samples: list[Path]
) -> None:
    # Given the counters as they stand (they are per process, so the test reads differences)
    before = scrape(client)
    image = base64.b64encode(samples[0].read_bytes()).decode()
    # When a job is submitted twice under one idempotency key, an unknown job is read and an
    # unknown path is asked for
    body = {"model": DEMO, "image": image, "idempotency_key": "metrics-1"}
    first = client.post("/v1/jobs/inference", json=body)
    again = client.post("/v1/jobs/inference", json=body)
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json()["job_id"] == again.json()["job_id"]
    assert client.get("/v1/jobs/0123456789abcdef0123456789abcdef").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Then requests are counted by route template, method and status
    assert grew("onnxq_http_requests_total", route="/v1/jobs/inference", method="POST", status="202") == 2
    assert grew("onnxq_http_requests_total", route="/v1/jobs/{job_id}", method="GET", status="404") == 1
    assert grew("onnxq_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert grew("onnxq_http_request_duration_seconds_count", route="/v1/jobs/inference", method="POST") == 2
    # and no raw path became a label
    routes = {dict(labels).get("route") for name, labels in after if name == "onnxq_http_requests_total"}
    assert not any("0123456789abcdef" in str(route) or "no/such" in str(route) for route in routes)
    # and the reused idempotency key did not count a second job
    assert grew("onnxq_jobs_submitted_total", model=DEMO_REF) == 1
    # and with no worker running, the one job waits in the queue
    assert value(after, "onnxq_queue_up") == 1
    assert value(after, "onnxq_queue_depth", queue="inference") == 1


def test_batch_submissions_count_each_accepted_image(client: TestClient, samples: list[Path]) -> None:
    before = scrape(client)
    images = [{"image": base64.b64encode(path.read_bytes()).decode()} for path in samples[:2]]
    images.append({"image": base64.b64encode(b"not an image at all").decode()})
    answer = client.post("/v1/jobs/inference:batch", json={"model": DEMO, "images": images})
    assert answer.status_code == 202, answer.text
    assert ["error" not in entry for entry in answer.json()["jobs"]] == [True, True, False]
    after = scrape(client)
    assert (
        value(after, "onnxq_jobs_submitted_total", model=DEMO_REF)
        - value(before, "onnxq_jobs_submitted_total", model=DEMO_REF)
        == 2
    )
    assert value(after, "onnxq_queue_depth", queue="inference") == 2


def test_job_latency_observed_by_the_web_process_is_exposed(client: TestClient) -> None:
    from producer.web.metrics import observe_job_latency

    before = scrape(client)
    observe_job_latency(DEMO_REF, 0.3)
    after = scrape(client)
    name = "onnxq_web_job_latency_seconds"
    assert value(after, f"{name}_count", model=DEMO_REF) - value(before, f"{name}_count", model=DEMO_REF) == 1
    assert (
        value(after, f"{name}_bucket", model=DEMO_REF, le="0.5")
        - value(before, f"{name}_bucket", model=DEMO_REF, le="0.5")
        == 1
    )


def test_a_scrape_with_redis_down_reports_the_queue_down(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given Redis at an address where nothing listens (a bound socket that never accepts)
    with socket.socket() as closed, monkeypatch.context() as patch:
        closed.bind(("127.0.0.1", 0))
        patch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed.getsockname()[1]}/0")
        get_settings.cache_clear()
        get_redis.cache_clear()
        # When Prometheus scrapes, the scrape still answers, with the queue marked down
        after = scrape(client)
    get_settings.cache_clear()
    get_redis.cache_clear()
    assert value(after, "onnxq_queue_up") == 0
    assert not any(name == "onnxq_queue_depth" for name, _ in after)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape_worker(port: int, process: subprocess.Popen[bytes], log_path: Path, ready: int) -> Samples:
    """The worker's exposition once it shows `ready` finished jobs and messages (both are counted
    just after the database sees a job end, so the first scrape may be early)."""
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    seen: Samples = {}
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the worker exited:\n{log_tail(log_path)}"
        try:
            seen = parse(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        except httpx.HTTPError:
            seen = {}
        finished = value(seen, "onnxq_jobs_finished_total", model=DEMO_REF, status="succeeded")
        messages = value(seen, "dramatiq_messages_total", queue_name="inference", actor_name="run_inference")
        if min(finished, messages) >= ready:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"the worker's metrics never showed {ready} jobs: {seen}\n{log_tail(log_path)}")


def test_a_worker_process_serves_batch_and_inference_metrics(
    migrated: str, samples: list[Path], tmp_path: Path
) -> None:
    # Given a worker process with its metrics on a free port, and jobs for it
    port = _free_port()
    log_path = tmp_path / "worker.log"
    process = start_worker_process(log_path, worker_env(ONNXQ_WORKER_METRICS_PORT=str(port)))
    try:
        ids = [submit_inference(samples[i % len(samples)].read_bytes(), DEMO).job_id for i in range(JOBS)]
        # When it has run them
        views = wait_all(ids)
        assert {view["status"] for view in views.values()} == {"succeeded"}
        exposed = _scrape_worker(port, process, log_path, JOBS)
    finally:
        stop_worker_process(process)
    # Then its port serves the batch-size and inference-time histograms of the demo model
    batches = value(exposed, "onnxq_batch_size_count", model=DEMO_REF)
    assert batches >= 1
    assert value(exposed, "onnxq_batch_size_sum", model=DEMO_REF) == JOBS
    assert value(exposed, "onnxq_inference_seconds_count", model=DEMO_REF) == batches
    assert value(exposed, "onnxq_inference_seconds_sum", model=DEMO_REF) > 0
    # and every job's queue and total latency
    assert value(exposed, "onnxq_job_latency_seconds_count", model=DEMO_REF, stage="queue") == JOBS
    assert value(exposed, "onnxq_job_latency_seconds_count", model=DEMO_REF, stage="total") == JOBS
    assert value(exposed, "onnxq_jobs_finished_total", model=DEMO_REF, status="succeeded") == JOBS
    # and Dramatiq's own message counters, from the same multiprocess directory under the data dir
    assert value(exposed, "dramatiq_messages_total", queue_name="inference", actor_name="run_inference") == JOBS
    assert list((get_settings().data_dir / "worker-metrics").glob("*.db"))


def test_batch_threads_recording_their_first_batches_at_once_create_the_metrics_once() -> None:
    """Two models' batch threads start together: the worker's metrics are created (and
    registered) once, not once per thread with the second registration failing."""
    import sys
    import threading

    from prometheus_client import REGISTRY

    import workers.metrics as worker_metrics

    def forget() -> None:
        if worker_metrics._create_metrics.cache_info().currsize:
            for metric in vars(worker_metrics._create_metrics()).values():
                REGISTRY.unregister(metric)
        worker_metrics._create_metrics.cache_clear()

    interval = sys.getswitchinterval()
    errors: list[BaseException] = []
    try:
        for _ in range(20):
            forget()
            start = threading.Barrier(8)

            def record(barrier: threading.Barrier = start) -> None:
                barrier.wait()
                try:
                    worker_metrics.observe_batch("m", 0.001, [])
                except BaseException as exc:  # reported below
                    errors.append(exc)

            sys.setswitchinterval(1e-6)  # switch threads as often as possible
            threads = [threading.Thread(target=record) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            sys.setswitchinterval(interval)
    finally:
        sys.setswitchinterval(interval)
        forget()
    assert errors == []
