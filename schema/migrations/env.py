"""Alembic environment: runs onnxq's migrations against `DATABASE_URL`."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import schema.tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from schema.db import get_engine

target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    """Run the migrations in one transaction on the process engine."""
    connectable = context.config.attributes.get("connection") or get_engine()
    with connectable.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # SQLite alters a table by copying it and dropping the old one, which a foreign key
            # pointing at it (jobs.ab_test_id → pytorch_ab_tests) would refuse. The pragma only
            # takes effect outside a transaction; the keys are checked once the migrations ran.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"The migration left rows with dangling foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


if context.is_offline_mode():
    raise SystemExit("onnxq migrations run online only: use `onnxq db upgrade`.")
run_migrations_online()
