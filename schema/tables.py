"""The SQLModel tables: the seed's four (names and columns kept) plus `jobs` and the audit head.

Timestamps are timezone-aware UTC everywhere (`utcnow()`); SQLModel stores them as UTC on SQLite
and PostgreSQL alike and returns them aware.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Now, as the aware UTC datetime every table stores."""
    return datetime.now(UTC)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TERMINAL_STATUSES = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)


class DeploymentStatus(enum.StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class PytorchModel(SQLModel, table=True):
    """A registered model version (the seed's registry; onnxq serves the ONNX ones)."""

    __tablename__ = "pytorch_models"
    __table_args__ = (UniqueConstraint("model_name", "model_version", name="uq_model_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(max_length=200, index=True)
    model_version: str = Field(max_length=50)
    model_type: str = Field(default="onnx", max_length=20)  # onnx / pytorch / torchscript
    file_path: str = Field(max_length=500)
    domain: str = Field(default="general", max_length=50)  # medical / legal / civic / ...
    deployment_status: str = Field(default=DeploymentStatus.ACTIVE.value, max_length=20)
    input_shape: list[Any] | None = Field(default=None, sa_column=Column(JSON))
    output_shape: list[Any] | None = Field(default=None, sa_column=Column(JSON))
    accuracy: float | None = None
    # onnxq's additions.
    sha256: str = Field(max_length=64)
    labels: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def ref(self) -> str:
        """`name@version`, as users write it."""
        return f"{self.model_name}@{self.model_version}"


class Job(SQLModel, table=True):
    """One accepted job, from `queued` to `succeeded` or `failed`."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created_at", "status", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(default="inference", max_length=20)
    status: str = Field(default=JobStatus.QUEUED.value, max_length=20)
    model_id: int | None = Field(default=None, foreign_key="pytorch_models.id", index=True)
    user_id: str | None = Field(default=None, max_length=200)
    input_hash: str | None = Field(default=None, max_length=64)
    # sha256(user_id, key): unique, so one idempotency key per user maps to one job.
    idempotency_key: str | None = Field(default=None, max_length=200)
    idempotency_scope: str | None = Field(default=None, max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    error_code: str | None = Field(default=None, max_length=50)
    error_message: str | None = Field(default=None, max_length=1000)
    # The API key that submitted the job (None from the CLI, the Python API, or with auth off).
    api_key_name: str | None = Field(default=None, max_length=100)
    # Ground truth sent back by the caller (POST /v1/jobs/{id}/feedback), for accuracy.
    feedback_label: str | None = Field(default=None, max_length=200)
    feedback_at: datetime | None = None
    # The A/B test that chose this job's model version, and the arm ("A" or "B").
    ab_test_id: int | None = Field(default=None, foreign_key="pytorch_ab_tests.id", index=True)
    variant: str | None = Field(default=None, max_length=1)


class PytorchInferenceLog(SQLModel, table=True):
    """One audit row per succeeded inference: hashed input, never the input; chained."""

    __tablename__ = "pytorch_inference_logs"

    # Assigned under the chain lock (not by the database), so id order is chain order.
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="pytorch_models.id", index=True)
    user_id: str | None = Field(default=None, max_length=200)
    input_hash: str = Field(max_length=64)
    inference_time_ms: float
    confidence: float
    result: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, index=True)
    # onnxq's additions.
    job_id: str = Field(max_length=32, unique=True)
    batch_size: int
    api_key_name: str | None = Field(default=None, max_length=100)
    variant: str | None = Field(default=None, max_length=1)  # the A/B arm that served the job
    prev_hash: str = Field(max_length=64)
    row_hash: str = Field(max_length=64)


class RouteLog(SQLModel, table=True):
    """One row per routing job that ended: where it was sent, who served it, what it cost.

    The query itself is never stored: `input_hash` is its HMAC under the audit key, like an
    image's. Cost reports and threshold calibration read this table.
    """

    __tablename__ = "route_logs"
    __table_args__ = (Index("ix_route_logs_created_at", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(max_length=32, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    user_id: str | None = Field(default=None, max_length=200)
    api_key_name: str | None = Field(default=None, max_length=100)
    input_hash: str = Field(max_length=64)
    score: int
    complexity: str = Field(max_length=20)
    reason: str = Field(max_length=30)
    variant: str | None = Field(default=None, max_length=20)
    decided_backend: str = Field(max_length=100)
    # None when every backend failed.
    served_by: str | None = Field(default=None, max_length=100)
    served_tier: str | None = Field(default=None, max_length=20)
    fallback_used: bool = False
    fallback_reason: str | None = Field(default=None, max_length=300)
    cost: float = 0.0
    # What the same query would have cost on the remote tier: the baseline of the savings report.
    all_remote_cost: float = 0.0
    latency_ms: float | None = None
    # The whole execution, every backend tried (fallbacks and failures included): what the
    # user waited for; routing A/B tests compare it.
    total_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ApiKey(SQLModel, table=True):
    """An API key of the web process: only its SHA-256 is stored; the key is shown once."""

    __tablename__ = "api_keys"
    # One active key per name; revoked keys keep their row (and their name) for the record.
    __table_args__ = (
        Index(
            "uq_api_keys_active_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    key_hash: str = Field(max_length=64, unique=True)
    prefix: str = Field(max_length=16)  # the key's first characters, to tell keys apart in lists
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class AuditChainHead(SQLModel, table=True):
    """The single lock row of the audit chain: the last id and hash appended.

    Every append updates this row first, which serialises appenders across processes and hosts
    (a row lock on PostgreSQL, the write lock on SQLite).
    """

    __tablename__ = "audit_chain_head"

    id: int = Field(default=1, primary_key=True)
    last_id: int = 0
    last_hash: str = Field(default="0" * 64, max_length=64)
    # The anchor left by retention purges: rows up to this id are gone, and the first remaining
    # row's prev_hash must equal the last purged row's hash.
    pruned_through_id: int = 0
    pruned_last_hash: str = Field(default="0" * 64, max_length=64)
    # When the last purged row was written, and an HMAC over the anchor: an anchor moved by hand
    # (to hide deleted rows) fails verification.
    pruned_through_at: datetime | None = None
    pruned_mac: str | None = Field(default=None, max_length=64)


class PytorchABTest(SQLModel, table=True):
    """An A/B test (closed by the scheduler): between two versions of a model (`kind` "model"),
    or between two routing backends for the router's medium queries (`kind` "route")."""

    __tablename__ = "pytorch_ab_tests"
    # One running test per split subject: a model name's jobs (or the router's medium queries)
    # cannot be split two ways.
    __table_args__ = (
        Index(
            "uq_ab_tests_running_model",
            "kind",
            "model_name",
            unique=True,
            sqlite_where=text("status = 'running'"),
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    test_name: str = Field(max_length=200, unique=True)
    # The arms of a model test; NULL in a routing test.
    model_a_id: int | None = Field(default=None, foreign_key="pytorch_models.id")
    model_b_id: int | None = Field(default=None, foreign_key="pytorch_models.id")
    traffic_split_percent: int = 50
    model_a_avg_latency_ms: float | None = None
    model_b_avg_latency_ms: float | None = None
    winner_model_id: int | None = Field(default=None, foreign_key="pytorch_models.id")
    status: str = Field(default="running", max_length=20)
    created_at: datetime = Field(default_factory=utcnow)
    # onnxq's additions. traffic_split_percent is the share of jobs sent to B.
    kind: str = Field(default="model", max_length=10)  # model / route
    # What the test splits: a model name, or "router" (the router's medium queries).
    model_name: str = Field(default="", max_length=200)
    # The arms of a routing test: backend names from the router config.
    backend_a: str | None = Field(default=None, max_length=100)
    backend_b: str | None = Field(default=None, max_length=100)
    metric: str = Field(default="accuracy", max_length=20)  # accuracy / latency / cost
    min_samples: int = 100  # per arm, before the test may close early
    ends_at: datetime | None = None
    auto_promote: bool = False
    started_at: datetime = Field(default_factory=utcnow)
    closed_at: datetime | None = None
    evaluated_at: datetime | None = None
    looks: int = 0  # interim looks spent (see workers/abstats.py)
    p_value: float | None = None
    winner_arm: str | None = Field(default=None, max_length=1)  # "A" / "B"; None: no winner (yet)
    reason: str | None = Field(default=None, max_length=300)
    # Per arm ("A", "B"): requests, mean and p95 latency ms, labelled, correct, accuracy, mean cost.
    figures: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class PytorchModelMetrics(SQLModel, table=True):
    """One row per model and day, computed by the scheduler."""

    __tablename__ = "pytorch_model_metrics"
    __table_args__ = (UniqueConstraint("model_id", "date", name="uq_metrics_model_date"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="pytorch_models.id")
    date: date
    total_requests: int = 0
    avg_inference_time_ms: float | None = None
    p95_inference_time_ms: float | None = None
    accuracy: float | None = None
    # onnxq's additions. Inference times are the batch's session.run; "total" is end to end
    # (accepted → committed). Percentiles: linear interpolation (PostgreSQL's percentile_cont).
    failed_requests: int = 0
    p50_inference_time_ms: float | None = None
    p99_inference_time_ms: float | None = None
    avg_total_ms: float | None = None
    p50_total_ms: float | None = None
    p95_total_ms: float | None = None
    p99_total_ms: float | None = None
    mean_batch_size: float | None = None
    labelled_requests: int = 0  # jobs with feedback; accuracy is over these (NULL when none)
    computed_at: datetime | None = None


class RouteMetrics(SQLModel, table=True):
    """One row per routing backend and day (the backend that served; NULL: none could)."""

    __tablename__ = "route_metrics"
    __table_args__ = (UniqueConstraint("backend", "date", name="uq_route_metrics_backend_date"),)

    id: int | None = Field(default=None, primary_key=True)
    backend: str = Field(max_length=100)  # "" for jobs no backend could serve
    date: date
    requests: int = 0
    fallbacks: int = 0
    cost: float = 0.0
    all_remote_cost: float = 0.0
    avg_latency_ms: float | None = None
    p95_latency_ms: float | None = None
    computed_at: datetime | None = None


class SchedulerClaim(SQLModel, table=True):
    """A periodic task claimed for one period: the unique row that stops two scheduler
    processes (or a restart) from enqueueing the same night twice."""

    __tablename__ = "scheduler_claims"
    __table_args__ = (UniqueConstraint("task", "period", name="uq_scheduler_claims_task_period"),)

    id: int | None = Field(default=None, primary_key=True)
    task: str = Field(max_length=100)
    period: str = Field(max_length=40)  # e.g. "2026-12-04" for a nightly task
    claimed_at: datetime = Field(default_factory=utcnow)
    claimed_by: str = Field(max_length=200)  # host:pid of the scheduler process
