"""scheduler: richer daily model metrics, daily routing metrics, scheduler claims

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

METRIC_COLUMNS = (
    "p50_inference_time_ms",
    "p99_inference_time_ms",
    "avg_total_ms",
    "p50_total_ms",
    "p95_total_ms",
    "p99_total_ms",
    "mean_batch_size",
)


def upgrade() -> None:
    with op.batch_alter_table("pytorch_model_metrics") as batch:
        batch.add_column(sa.Column("failed_requests", sa.Integer(), nullable=False, server_default="0"))
        for name in METRIC_COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
        batch.add_column(sa.Column("labelled_requests", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("computed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "route_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(length=100), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("fallbacks", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("all_remote_cost", sa.Float(), nullable=False),
        sa.Column("avg_latency_ms", sa.Float(), nullable=True),
        sa.Column("p95_latency_ms", sa.Float(), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("backend", "date", name="uq_route_metrics_backend_date"),
    )
    op.create_table(
        "scheduler_claims",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("period", sa.String(length=40), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task", "period", name="uq_scheduler_claims_task_period"),
    )


def downgrade() -> None:
    op.drop_table("scheduler_claims")
    op.drop_table("route_metrics")
    with op.batch_alter_table("pytorch_model_metrics") as batch:
        batch.drop_column("computed_at")
        batch.drop_column("labelled_requests")
        for name in reversed(METRIC_COLUMNS):
            batch.drop_column(name)
        batch.drop_column("failed_requests")
