"""Alembic environment: runs onnxq's migrations against `DATABASE_URL`."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

import schema.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from schema.db import get_engine

target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    """Run the migrations on the process engine: in one transaction on PostgreSQL; on SQLite,
    which Alembic gives no transactional DDL, each in its own."""
    with get_engine().connect() as connection:
        if connection.dialect.name != "sqlite":
            _run(connection)
            return
        try:
            # SQLite alters a table by copying it and dropping the old one, which a foreign key
            # pointing at it (jobs.ab_test_id → pytorch_ab_tests) would refuse. The pragma only
            # takes effect outside a transaction; each migration's keys are checked before it
            # commits instead (`_keys_intact`).
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
            _run(connection, on_version_apply=_keys_intact)
        finally:
            try:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()
            except Exception:
                connection.invalidate()  # never back to the pool with the keys unchecked
                raise


def _run(connection: Connection, **options: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        **options,
    )
    with context.begin_transaction():
        context.run_migrations()


def _keys_intact(*, ctx: Any, **_: Any) -> None:
    """Called in each migration's transaction, before its commit: a migration that leaves a
    dangling foreign key fails (and is rolled back) instead of being recorded as done."""
    broken = ctx.connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"The migration left rows with dangling foreign keys: {broken[:5]}")


if context.is_offline_mode():
    raise SystemExit("onnxq migrations run online only: use `onnxq db upgrade`.")
run_migrations_online()
