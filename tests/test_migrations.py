"""Migrations up and down on SQLite and PostgreSQL; `upgrade` twice is harmless."""

from __future__ import annotations

from sqlalchemy import inspect
from typer.testing import CliRunner

from onnxq.cli import app
from schema import migrate
from schema.db import get_engine

TABLES = {"pytorch_models", "pytorch_inference_logs", "pytorch_ab_tests", "pytorch_model_metrics", "jobs", "api_keys"}
runner = CliRunner()


def _tables() -> set[str]:
    return set(inspect(get_engine()).get_table_names())


def test_upgrade_twice_downgrade_and_back(env: str) -> None:
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert _tables() >= TABLES
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0  # harmless
    current = runner.invoke(app, ["db", "current"])
    assert migrate.head_revision() in current.output
    assert runner.invoke(app, ["db", "downgrade", "base"]).exit_code == 0
    assert not (TABLES & _tables())
    assert migrate.current_revision() is None
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert _tables() >= TABLES


def test_seed_columns_exist(env: str) -> None:
    migrate.upgrade()
    inspector = inspect(get_engine())
    columns = {t: {c["name"] for c in inspector.get_columns(t)} for t in TABLES}
    assert {"id", "model_name", "model_version", "model_type", "file_path", "domain", "deployment_status",
            "input_shape", "output_shape", "accuracy"} <= columns["pytorch_models"]  # fmt: skip
    assert {"id", "model_id", "user_id", "input_hash", "inference_time_ms", "confidence", "result", "created_at",
            "job_id", "batch_size", "prev_hash", "row_hash"} <= columns["pytorch_inference_logs"]  # fmt: skip
    assert {"id", "test_name", "model_a_id", "model_b_id", "traffic_split_percent", "model_a_avg_latency_ms",
            "model_b_avg_latency_ms", "winner_model_id", "status"} <= columns["pytorch_ab_tests"]  # fmt: skip
    assert {"id", "model_id", "date", "total_requests", "avg_inference_time_ms", "p95_inference_time_ms",
            "accuracy"} <= columns["pytorch_model_metrics"]  # fmt: skip
    assert {"id", "kind", "status", "model_id", "user_id", "input_hash", "created_at", "started_at", "finished_at",
            "result", "error_code", "error_message"} <= columns["jobs"]  # fmt: skip


def test_migrations_match_the_models(env: str) -> None:
    """What `alembic upgrade head` builds is what the SQLModel tables declare (no drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import schema.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

    migrate.upgrade()
    with get_engine().connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == []
