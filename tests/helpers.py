"""Small helpers shared by the tests that run jobs end to end."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from producer.client import wait_for_jobs
from schema.db import get_engine
from schema.tables import PytorchInferenceLog

DEMO = "chest-xray-classifier-demo"


def wait_all(job_ids: list[str], timeout_s: float = 60) -> dict[str, dict[str, Any]]:
    views = wait_for_jobs(job_ids, timeout_s=timeout_s)
    unfinished = [v for v in views.values() if v["status"] not in ("succeeded", "failed")]
    assert not unfinished, f"jobs did not end in {timeout_s}s: {unfinished[:2]}"
    return views


def audit_rows(job_ids: list[str] | None = None) -> list[PytorchInferenceLog]:
    with Session(get_engine()) as session:
        query = select(PytorchInferenceLog).order_by(col(PytorchInferenceLog.id))
        if job_ids is not None:
            query = query.where(col(PytorchInferenceLog.job_id).in_(job_ids))
        return list(session.exec(query).all())
