"""Models and health: what upstream systems and load balancers ask before sending work."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from onnxq.payloads import get_redis
from onnxq.settings import get_settings
from producer.web.auth import require_key
from producer.web.errors import responses
from schema.db import get_engine
from schema.migrate import current_revision
from schema.tables import PytorchModel

router = APIRouter()


class ModelInfo(BaseModel):
    """A registered model version."""

    id: int
    model_name: str
    model_version: str
    model_type: str
    domain: str
    deployment_status: str = Field(description="active or inactive")
    input_shape: list[Any] | None
    output_shape: list[Any] | None
    accuracy: float | None
    sha256: str
    labels: list[str]
    created_at: datetime
    updated_at: datetime


@router.get("/v1/models", dependencies=[Depends(require_key)], responses=responses(401, 403, 429, 503))
def list_models() -> list[ModelInfo]:
    """Registered models with their status, labels and shapes."""
    with Session(get_engine()) as session:
        rows = session.exec(select(PytorchModel).order_by(col(PytorchModel.model_name), col(PytorchModel.id)))
        return [ModelInfo.model_validate(row.model_dump()) for row in rows]


def health(response: Response) -> dict[str, Any]:
    """Redis, the database and the model repository: 200 when all answer, else 503."""
    checks = {"redis": _check_redis(), "database": _check_database(), "models": _check_models()}
    healthy = all(check["ok"] for check in checks.values())
    response.status_code = 200 if healthy else 503
    return {"status": "ok" if healthy else "unavailable", "checks": checks}


router.get("/health", responses={503: {"description": "A dependency is down (same body)"}})(health)
router.get("/api/health", responses={503: {"description": "A dependency is down (same body)"}})(health)


def _check_redis() -> dict[str, Any]:
    try:
        get_redis().ping()
        return {"ok": True}
    except redis.RedisError as exc:
        return {"ok": False, "error": type(exc).__name__}


def _check_database() -> dict[str, Any]:
    try:
        revision = current_revision()
    except SQLAlchemyError as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": revision is not None, "revision": revision}


def _check_models() -> dict[str, Any]:
    model_dir = get_settings().model_dir
    return {"ok": model_dir.is_dir(), "path": str(model_dir)}
