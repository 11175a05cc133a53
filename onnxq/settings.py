"""The one settings object: read once from the environment, imported everywhere else.

12-factor names first (`REDIS_URL`, `DATABASE_URL`, `PORT`), `ONNXQ_*` for the rest. No other
module reads `os.environ`.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything a process of onnxq may be configured with."""

    model_config = SettingsConfigDict(env_prefix="ONNXQ_", extra="ignore", populate_by_name=True)

    env: Literal["development", "production"] = "development"
    log_level: str = "INFO"

    redis_url_env: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL"))
    database_url_env: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL"))
    port: int = Field(default=8000, validation_alias=AliasChoices("PORT"))

    data_dir: Path = Path("data")
    model_dir: Path = Path("onnx")
    router_config: Path = Path("router.toml")
    audit_key: SecretStr | None = None

    # Producer-side validation.
    max_image_bytes: int = 10 * MiB
    max_image_pixels: int = 40_000_000
    min_image_side_px: int = 8
    max_query_chars: int = 20_000  # routing queries

    # The web process (`onnxq api`).
    api_host: str = "127.0.0.1"
    # API keys are required unless this is off, which is allowed only on a loopback bind.
    api_auth: bool = True
    rate_limit_per_minute: int = 1200  # requests per API key per minute, across web processes; 0 = none
    failed_auth_per_minute: int = 30  # unknown keys per client address per minute, then 429; 0 = none
    max_queue_depth: int = 10_000  # queued inference messages past which new jobs get 429; 0 = none
    max_batch_images: int = 32  # images per POST /v1/jobs/inference:batch
    max_batch_request_bytes: int = 64 * MiB
    body_idle_timeout_s: float = 30.0  # a request body that stalls this long gets 408
    body_timeout_s: float = 300.0  # a request body not whole after this long gets 408
    sync_wait_s: float = 30.0  # how long POST /api/pytorch/inference waits before answering 202

    # Batching defaults for models whose model.toml says nothing.
    default_max_batch_size: int = 16
    default_max_wait_ms: float = 5.0

    # Worker.
    worker_processes: int = 1
    worker_threads: int | None = None  # default: 4x the largest max_batch_size of the active models
    worker_metrics_port: int = 9191  # Prometheus exposition of every worker process's metrics; 0 = off
    # The longest an idle worker waits between looks at an empty queue: the pickup delay of the
    # first job after a quiet spell, against one Redis call per process per interval.
    worker_idle_poll_ms: int = 100
    job_max_retries: int = 5
    job_min_backoff_ms: int = 500
    job_max_backoff_ms: int = 60_000
    payload_ttl_s: int = 7 * 24 * 3600
    # A job queued or running this long whose message is gone from Redis is re-sent (or failed `lost`).
    job_stale_after_s: int = Field(default=3600, ge=60)
    # Ended jobs and route logs, then purged; at least 5 days: each night recomputes the metrics of
    # the three days before it from the jobs.
    job_retention_days: int = Field(default=30, ge=5)
    audit_retention_days: int = Field(default=6 * 365 + 2, ge=1)  # audit rows (six years), then purged
    redis_namespace: str = "onnxq"

    # The scheduler (`onnxq scheduler`).
    nightly_at: str = Field(default="00:10", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")  # HH:MM, UTC
    sweep_every_s: int = Field(default=300, ge=10)
    abtest_every_s: int = Field(default=300, ge=10)  # how often running A/B tests are evaluated
    # Dramatiq's Redis broker requeues the messages of a dead worker once its heartbeat is
    # this old; lower it in tests to see redelivery quickly.
    redis_heartbeat_timeout_ms: int = 60_000
    redis_maintenance_chance: int = 1000  # out of a million fetches

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env == "production":
            missing = [
                name
                for name, value in (
                    ("ONNXQ_AUDIT_KEY", self.audit_key),
                    ("DATABASE_URL", self.database_url_env),
                    ("REDIS_URL", self.redis_url_env),
                )
                if not value
            ]
            if missing:
                raise ValueError(
                    f"ONNXQ_ENV=production needs {', '.join(missing)} set explicitly: a per-host "
                    "default would split the audit chain, the database or the queue between hosts."
                )
        return self

    @property
    def embedded_redis_socket(self) -> Path:
        """Where `onnxq up` puts the socket of the Redis it starts itself."""
        return (self.data_dir / "redis" / "redis.sock").resolve()

    @property
    def redis_url(self) -> str:
        """`REDIS_URL`; else the embedded Redis if `onnxq up` runs one; else a local Redis."""
        if self.redis_url_env:
            return self.redis_url_env
        if self.embedded_redis_socket.exists():
            return f"unix://{self.embedded_redis_socket}"
        return "redis://127.0.0.1:6379/0"

    @property
    def database_url(self) -> str:
        """`DATABASE_URL` (PostgreSQL URLs use psycopg 3); else a SQLite file in the data dir."""
        url = self.database_url_env
        if not url:
            return f"sqlite:///{(self.data_dir / 'onnxq.db').resolve()}"
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    def env_secret(self, name: str) -> str | None:
        """The value of environment variable `name`, or None if unset or empty: for secrets such as
        a backend's API key, whose variable is named in a config file rather than declared here."""
        return os.environ.get(name) or None

    def audit_key_bytes(self) -> bytes:
        """The HMAC key for input hashes and the audit chain; generated once into the data dir."""
        if self.audit_key is not None:
            return self.audit_key.get_secret_value().encode()
        return _key_file((self.data_dir / "audit.key").resolve())


@lru_cache(maxsize=8)
def _key_file(path: Path) -> bytes:
    """The key in `path`, created on first use; read once per process."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        candidate.write_text(secrets.token_hex(32))
        candidate.chmod(0o600)
        try:
            # link() fails if another process won the race; then we use its key.
            path.hardlink_to(candidate)
        except FileExistsError:
            pass
        finally:
            candidate.unlink()
    return path.read_text().strip().encode()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
