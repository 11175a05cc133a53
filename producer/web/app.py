"""The ASGI application (uvicorn factory: `producer.web.app:create_app`)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError, ProgrammingError
from starlette.exceptions import HTTPException as StarletteHTTPException

from onnxq import __version__
from onnxq.errors import OnnxqError
from onnxq.settings import get_settings
from producer.web import abtests, jobs, metrics, metrics_daily, route, seed, system
from producer.web.bodies import JSON_OVERHEAD_BYTES, base64_length
from producer.web.errors import (
    database_error_handler,
    http_exception_handler,
    internal_error_handler,
    onnxq_error_handler,
    validation_error_handler,
)
from producer.web.limits import BodyLimit
from producer.web.waiter import lifespan


def create_app() -> FastAPI:
    """Build the web application: every router, the error handlers."""
    app = FastAPI(
        title="onnxq",
        version=__version__,
        description="Queue-driven ONNX inference jobs: submit images, poll results by job id.",
        lifespan=lifespan,
    )
    app.add_exception_handler(OnnxqError, onnxq_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(OperationalError, database_error_handler)
    app.add_exception_handler(ProgrammingError, database_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)
    settings = get_settings()
    image_body = base64_length(settings.max_image_bytes) + JSON_OVERHEAD_BYTES
    app.add_middleware(
        BodyLimit,
        limits={
            "/v1/jobs/inference": image_body,
            "/api/pytorch/inference": image_body,
            "/v1/jobs/route": image_body,
            "/v1/jobs/inference:batch": settings.max_batch_request_bytes + JSON_OVERHEAD_BYTES,
        },
        default_bytes=JSON_OVERHEAD_BYTES,  # feedback and the like: small JSON
        idle_timeout_s=settings.body_idle_timeout_s,
        total_timeout_s=settings.body_timeout_s,
    )
    # Added last, so outermost: it also counts the requests BodyLimit refuses.
    app.add_middleware(metrics.RequestMetrics)
    # Before jobs: POST /v1/jobs/route must be matched ahead of GET /v1/jobs/{job_id}.
    app.include_router(route.router)
    app.include_router(jobs.router)
    app.include_router(system.router)
    app.include_router(seed.router)
    app.include_router(metrics.router)
    app.include_router(metrics_daily.router)
    app.include_router(abtests.router)
    return app
