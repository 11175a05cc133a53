"""audit anchor: where the audit chain starts once old rows are purged

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_chain_head") as batch:
        batch.add_column(sa.Column("pruned_through_id", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("pruned_last_hash", sa.String(length=64), nullable=False, server_default="0" * 64))
        batch.add_column(sa.Column("pruned_through_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("pruned_mac", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_chain_head") as batch:
        batch.drop_column("pruned_mac")
        batch.drop_column("pruned_through_at")
        batch.drop_column("pruned_last_hash")
        batch.drop_column("pruned_through_id")
