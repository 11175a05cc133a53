"""A/B tests: what a test measures and how it ended; the arm on jobs and audit rows

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    with op.batch_alter_table("pytorch_ab_tests") as batch:
        batch.add_column(sa.Column("model_name", sa.String(length=200), nullable=False, server_default=""))
        batch.add_column(sa.Column("metric", sa.String(length=20), nullable=False, server_default="accuracy"))
        batch.add_column(sa.Column("min_samples", sa.Integer(), nullable=False, server_default="100"))
        batch.add_column(sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("auto_promote", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())
        )
        batch.add_column(sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("looks", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("p_value", sa.Float(), nullable=True))
        batch.add_column(sa.Column("reason", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("figures", sa.JSON(), nullable=True))
    op.create_index(
        "uq_ab_tests_running_model",
        "pytorch_ab_tests",
        ["model_name"],
        unique=True,
        sqlite_where=RUNNING,
        postgresql_where=RUNNING,
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("ab_test_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("variant", sa.String(length=1), nullable=True))
        batch.create_index("ix_jobs_ab_test_id", ["ab_test_id"])
        batch.create_foreign_key("fk_jobs_ab_test_id", "pytorch_ab_tests", ["ab_test_id"], ["id"])
    with op.batch_alter_table("pytorch_inference_logs") as batch:
        batch.add_column(sa.Column("variant", sa.String(length=1), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pytorch_inference_logs") as batch:
        batch.drop_column("variant")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_ab_test_id", type_="foreignkey")
        batch.drop_index("ix_jobs_ab_test_id")
        batch.drop_column("variant")
        batch.drop_column("ab_test_id")
    op.drop_index("uq_ab_tests_running_model", table_name="pytorch_ab_tests")
    with op.batch_alter_table("pytorch_ab_tests") as batch:
        for name in (
            "figures",
            "reason",
            "p_value",
            "looks",
            "evaluated_at",
            "closed_at",
            "started_at",
            "auto_promote",
            "ends_at",
            "min_samples",
            "metric",
            "model_name",
        ):
            batch.drop_column(name)
