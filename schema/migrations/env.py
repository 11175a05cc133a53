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
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("onnxq migrations run online only: use `onnxq db upgrade`.")
run_migrations_online()
