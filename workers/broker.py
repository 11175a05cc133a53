"""The Dramatiq broker, built once on import from the settings; every actor module imports it."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from onnxq.settings import get_settings
from workers.metrics import prometheus_middleware

log = logging.getLogger(__name__)

INFERENCE_QUEUE = "inference"
MAINTENANCE_QUEUE = "maintenance"
ROUTING_QUEUE = "routing"


class ModelsMiddleware(dramatiq.Middleware):
    """Loads and warms the models before a worker process consumes; stops batchers at exit."""

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        # Dramatiq's idle consumer backs off up to `worker_timeout` (1 s by default) between
        # fetches from an empty queue: the first job after a quiet spell would wait that long.
        worker.worker_timeout = get_settings().worker_idle_poll_ms

    def after_process_boot(self, broker: Any) -> None:
        from workers.runtime import get_runtime

        get_runtime().load_active()

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        # Worker threads have finished their messages by now, so no batch is lost.
        from workers.runtime import get_runtime

        get_runtime().stop()


def build_broker() -> RedisBroker:
    """A Redis broker for `REDIS_URL` with onnxq's middleware and namespace."""
    settings = get_settings()
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url,
        namespace=f"{settings.redis_namespace}-dramatiq",
        heartbeat_timeout=settings.redis_heartbeat_timeout_ms,
        maintenance_chance=settings.redis_maintenance_chance,
        # Bounded, like onnxq's own Redis client: a Redis that stops answering makes a send fail
        # (retried by the caller) instead of hanging it; the scheduler sends while it holds its
        # claim's transaction open. Dramatiq polls with short commands, never a blocking read.
        socket_timeout=30,
        socket_connect_timeout=10,
    )
    if settings.worker_metrics_port:
        # Before ModelsMiddleware: its boot hook points prometheus-client at the shared directory
        # before the models load and record anything.
        broker.add_middleware(prometheus_middleware(settings))
    broker.add_middleware(ModelsMiddleware())
    return broker


broker = build_broker()
dramatiq.set_broker(broker)
