"""The web process's Prometheus metrics and `GET /metrics`.

Requests are counted by route template (`/v1/jobs/{job_id}`, never the raw path) so the number of
series stays bounded. The metrics live in prometheus-client's default registry, once per process,
so building the app twice (tests do) registers nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.client import SubmitOutcome, queue_depth

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_S_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter(
    "onnxq_http_requests", "HTTP requests by route template, method and status.", ["route", "method", "status"]
)
REQUEST_DURATION_S = Histogram(
    "onnxq_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method.",
    ["route", "method"],
    buckets=LATENCY_S_BUCKETS,
)
JOBS_SUBMITTED = Counter("onnxq_jobs_submitted", "Jobs accepted over HTTP, by model (NAME@VERSION).", ["model"])
WEB_JOB_LATENCY_S = Histogram(
    "onnxq_web_job_latency_seconds",
    "Submission to result, for jobs the web process waited on (POST /api/pytorch/inference).",
    ["model"],
    buckets=LATENCY_S_BUCKETS,
)


def count_submitted(outcome: SubmitOutcome) -> None:
    """Count a job accepted over HTTP; an idempotency key that returned an existing job is not a new one."""
    if not outcome.reused:
        JOBS_SUBMITTED.labels(outcome.model).inc()


def observe_job_latency(model: str, seconds: float) -> None:
    """Record how long a job the web process waited on took, from submission to its result.

    For the synchronous endpoints: call it once per job seen to end, with its NAME@VERSION.
    """
    WEB_JOB_LATENCY_S.labels(model).observe(seconds)


class QueueDepthCollector(Collector):
    """Reads the inference queue's depth from Redis at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("onnxq_queue_up", "1 when the queue (Redis) answered this scrape, else 0.")
        try:
            depth = queue_depth("inference")
        except redis.RedisError:
            # A scrape must not fail with Redis: the gauge says it is down instead.
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        gauge = GaugeMetricFamily(
            "onnxq_queue_depth", "Messages waiting in a queue, not yet taken by a worker.", labels=["queue"]
        )
        gauge.add_metric(["inference"], depth)
        yield gauge


REGISTRY.register(QueueDepthCollector())


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by route template, method and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before it answers

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            # The router stores the route it matched in the scope; the template, not the path,
            # is the label. Methods are a client's free text, hence the closed set.
            route = getattr(scope.get("route"), "path", UNMATCHED)
            method = scope["method"] if scope["method"] in METHODS else "other"
            REQUESTS.labels(route, method, str(status)).inc()
            REQUEST_DURATION_S.labels(route, method).observe(time.perf_counter() - started)


router = APIRouter(tags=["system"])


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format", "content": {"text/plain": {}}}},
)
async def metrics() -> PlainTextResponse:
    """Prometheus metrics: requests by route and status, jobs submitted by model, queue depth,
    job latency. No API key needed."""
    # Off the event loop: the queue-depth collector asks Redis.
    body = await run_in_threadpool(generate_latest, REGISTRY)
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)
