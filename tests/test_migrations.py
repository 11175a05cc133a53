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


def test_0007_keeps_the_winners_of_tests_closed_before_it(env: str) -> None:
    """Tests closed before routing A/B tests named their winner by model only: the upgrade
    records the winning arm, and a downgrade keeps model tests and drops routing ones."""
    from sqlalchemy import text

    migrate.upgrade("0006")
    with get_engine().begin() as connection:
        for version in ("1", "2"):
            connection.execute(
                text(
                    "INSERT INTO pytorch_models (model_name, model_version, model_type, file_path, domain, "
                    "deployment_status, sha256, labels, config, created_at, updated_at) "
                    "VALUES ('m', :v, 'onnx', 'f', 'd', 'active', '0', '[]', '{}', "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"v": version},
            )
        a, b = connection.execute(text("SELECT id FROM pytorch_models ORDER BY model_version")).scalars()
        for name, winner in (("won-by-b", b), ("won-by-a", a), ("no-winner", None)):
            connection.execute(
                text(
                    "INSERT INTO pytorch_ab_tests (test_name, model_a_id, model_b_id, winner_model_id, status, "
                    "traffic_split_percent, model_name, created_at) "
                    "VALUES (:n, :a, :b, :w, 'closed', 50, 'm', CURRENT_TIMESTAMP)"
                ),
                {"n": name, "a": a, "b": b, "w": winner},
            )
        # A job of one of them: SQLite's copy-and-drop of the table must not trip on its key
        test_id = connection.execute(text("SELECT id FROM pytorch_ab_tests WHERE test_name = 'won-by-b'")).scalar()
        connection.execute(
            text(
                "INSERT INTO jobs (id, kind, status, model_id, input_hash, created_at, attempts, ab_test_id, variant) "
                "VALUES ('j1', 'inference', 'succeeded', :m, '0', CURRENT_TIMESTAMP, 1, :t, 'B')"
            ),
            {"m": b, "t": test_id},
        )
    migrate.upgrade()
    with get_engine().begin() as connection:
        assert connection.execute(text("SELECT ab_test_id FROM jobs WHERE id = 'j1'")).scalar() == test_id
        rows = connection.execute(text("SELECT test_name, kind, winner_arm FROM pytorch_ab_tests")).all()
        assert sorted(map(tuple, rows)) == [
            ("no-winner", "model", None),
            ("won-by-a", "model", "A"),
            ("won-by-b", "model", "B"),
        ]
        connection.execute(
            text(
                "INSERT INTO pytorch_ab_tests (test_name, kind, backend_a, backend_b, status, traffic_split_percent, "
                "model_name, created_at) "
                "VALUES ('route', 'route', 'x', 'y', 'running', 50, 'router', CURRENT_TIMESTAMP)"
            )
        )
    migrate.downgrade("0006")
    with get_engine().begin() as connection:
        names = connection.execute(text("SELECT test_name FROM pytorch_ab_tests")).scalars().all()
        assert connection.execute(text("SELECT ab_test_id FROM jobs WHERE id = 'j1'")).scalar() == test_id
    assert sorted(names) == ["no-winner", "won-by-a", "won-by-b"]
