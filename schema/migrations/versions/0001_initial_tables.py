"""initial tables

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "pytorch_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.String(length=50), nullable=False),
        sa.Column("model_type", sa.String(length=20), nullable=False),
        sa.Column("file_path", sa.String(length=500), nullable=False),
        sa.Column("domain", sa.String(length=50), nullable=False),
        sa.Column("deployment_status", sa.String(length=20), nullable=False),
        sa.Column("input_shape", sa.JSON(), nullable=True),
        sa.Column("output_shape", sa.JSON(), nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_name", "model_version", name="uq_model_name_version"),
    )
    with op.batch_alter_table("pytorch_models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pytorch_models_model_name"), ["model_name"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.String(length=200), nullable=True),
        sa.Column("input_hash", sa.String(length=64), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("idempotency_scope", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error_code", sa.String(length=50), nullable=True),
        sa.Column("error_message", sa.String(length=1000), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["pytorch_models.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_scope"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_model_id"), ["model_id"], unique=False)
        batch_op.create_index("ix_jobs_status_created_at", ["status", "created_at"], unique=False)

    op.create_table(
        "pytorch_ab_tests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("test_name", sa.String(length=200), nullable=False),
        sa.Column("model_a_id", sa.Integer(), nullable=False),
        sa.Column("model_b_id", sa.Integer(), nullable=False),
        sa.Column("traffic_split_percent", sa.Integer(), nullable=False),
        sa.Column("model_a_avg_latency_ms", sa.Float(), nullable=True),
        sa.Column("model_b_avg_latency_ms", sa.Float(), nullable=True),
        sa.Column("winner_model_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_a_id"],
            ["pytorch_models.id"],
        ),
        sa.ForeignKeyConstraint(
            ["model_b_id"],
            ["pytorch_models.id"],
        ),
        sa.ForeignKeyConstraint(
            ["winner_model_id"],
            ["pytorch_models.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("test_name"),
    )
    op.create_table(
        "pytorch_inference_logs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=True),
        sa.Column("input_hash", sa.String(length=64), nullable=False),
        sa.Column("inference_time_ms", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["pytorch_models.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id"),
    )
    with op.batch_alter_table("pytorch_inference_logs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pytorch_inference_logs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_pytorch_inference_logs_model_id"), ["model_id"], unique=False)

    # The audit chain's lock row exists from the start, so appenders only ever update it.
    op.bulk_insert(
        sa.table(
            "audit_chain_head",
            sa.column("id", sa.Integer),
            sa.column("last_id", sa.Integer),
            sa.column("last_hash", sa.String),
        ),
        [{"id": 1, "last_id": 0, "last_hash": "0" * 64}],
    )
    op.create_table(
        "pytorch_model_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("total_requests", sa.Integer(), nullable=False),
        sa.Column("avg_inference_time_ms", sa.Float(), nullable=True),
        sa.Column("p95_inference_time_ms", sa.Float(), nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["pytorch_models.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "date", name="uq_metrics_model_date"),
    )


def downgrade() -> None:
    op.drop_table("pytorch_model_metrics")
    with op.batch_alter_table("pytorch_inference_logs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pytorch_inference_logs_model_id"))
        batch_op.drop_index(batch_op.f("ix_pytorch_inference_logs_created_at"))

    op.drop_table("pytorch_inference_logs")
    op.drop_table("pytorch_ab_tests")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_created_at")
        batch_op.drop_index(batch_op.f("ix_jobs_model_id"))

    op.drop_table("jobs")
    with op.batch_alter_table("pytorch_models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pytorch_models_model_name"))

    op.drop_table("pytorch_models")
    op.drop_table("audit_chain_head")
