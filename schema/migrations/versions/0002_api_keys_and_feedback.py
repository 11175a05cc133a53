"""api keys, the key name on jobs and audit rows, job feedback

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index(
        "uq_api_keys_active_name",
        "api_keys",
        ["name"],
        unique=True,
        sqlite_where=sa.text("revoked_at IS NULL"),
        postgresql_where=sa.text("revoked_at IS NULL"),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("api_key_name", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("feedback_label", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("pytorch_inference_logs") as batch:
        batch.add_column(sa.Column("api_key_name", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pytorch_inference_logs") as batch:
        batch.drop_column("api_key_name")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("feedback_at")
        batch.drop_column("feedback_label")
        batch.drop_column("api_key_name")
    op.drop_index("uq_api_keys_active_name", table_name="api_keys")
    op.drop_table("api_keys")
