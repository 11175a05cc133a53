"""Alembic driven from Python: `onnxq db upgrade|downgrade|current` call these."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from schema.db import get_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(revision: str = "head") -> None:
    """Migrate up to `revision`; harmless when already there."""
    command.upgrade(alembic_config(), revision)


def downgrade(revision: str) -> None:
    """Migrate down to `revision` (`base` drops everything)."""
    command.downgrade(alembic_config(), revision)


def current_revision() -> str | None:
    """The revision the database is at, or None for an empty database."""
    with get_engine().connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision in the migrations directory."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
