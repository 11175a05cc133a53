"""Routing A/B tests: a test's kind, backend arms, the winning arm; model arms may be NULL; a
route log's whole execution time

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    op.drop_index("uq_ab_tests_running_model", table_name="pytorch_ab_tests")
    with op.batch_alter_table("pytorch_ab_tests") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=10), nullable=False, server_default="model"))
        batch.add_column(sa.Column("backend_a", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("backend_b", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("winner_arm", sa.String(length=1), nullable=True))
        batch.alter_column("model_a_id", existing_type=sa.Integer(), nullable=True)
        batch.alter_column("model_b_id", existing_type=sa.Integer(), nullable=True)
    # Tests closed before this revision name their winner by model only.
    op.execute(
        "UPDATE pytorch_ab_tests SET winner_arm = CASE WHEN winner_model_id = model_a_id THEN 'A' ELSE 'B' END "
        "WHERE winner_model_id IS NOT NULL"
    )
    with op.batch_alter_table("route_logs") as batch:
        batch.add_column(sa.Column("total_ms", sa.Float(), nullable=True))
    op.create_index(
        "uq_ab_tests_running_model",
        "pytorch_ab_tests",
        ["kind", "model_name"],
        unique=True,
        sqlite_where=RUNNING,
        postgresql_where=RUNNING,
    )


def downgrade() -> None:
    with op.batch_alter_table("route_logs") as batch:
        batch.drop_column("total_ms")
    op.drop_index("uq_ab_tests_running_model", table_name="pytorch_ab_tests")
    routing = "SELECT id FROM pytorch_ab_tests WHERE kind <> 'model'"
    op.execute(f"UPDATE jobs SET ab_test_id = NULL WHERE ab_test_id IN ({routing})")
    op.execute("DELETE FROM pytorch_ab_tests WHERE kind <> 'model'")
    with op.batch_alter_table("pytorch_ab_tests") as batch:
        batch.alter_column("model_b_id", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("model_a_id", existing_type=sa.Integer(), nullable=False)
        for name in ("winner_arm", "backend_b", "backend_a", "kind"):
            batch.drop_column(name)
    op.create_index(
        "uq_ab_tests_running_model",
        "pytorch_ab_tests",
        ["model_name"],
        unique=True,
        sqlite_where=RUNNING,
        postgresql_where=RUNNING,
    )
