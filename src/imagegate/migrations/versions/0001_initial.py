"""Initial schema: api keys, tasks, webhook outbox and attempts.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("webhook_secret", sa.Text, nullable=False),
        sa.Column("previous_webhook_secret", sa.Text, nullable=True),
        sa.Column("previous_secret_expires_at", sa.Float, nullable=True),
    )
    op.create_table(
        "tasks",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("owner", sa.String(80), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("references", sa.Text, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("webhook_url", sa.Text, nullable=True),
        sa.Column("generated", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("engine", sa.String(40), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("text", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("lease_owner", sa.String(80), nullable=True),
        sa.Column("available_at", sa.Float, nullable=True),
    )
    op.create_index("ix_tasks_owner_seq", "tasks", ["owner", "seq"])
    op.create_index("ix_tasks_owner_available_at", "tasks", ["owner", "available_at"])
    op.create_table(
        "idempotency_keys",
        sa.Column("owner", sa.String(80), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_tasks_available_at", "tasks", ["available_at"])
    op.create_index(
        "ix_tasks_leased_available_at",
        "tasks",
        ["available_at"],
        postgresql_where=sa.text("lease_owner IS NOT NULL"),
        sqlite_where=sa.text("lease_owner IS NOT NULL"),
    )
    op.create_table(
        "webhook_outbox",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("owner", sa.String(80), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=True),
        sa.Column("lease_owner", sa.String(80), nullable=True),
        sa.Column("last_status_code", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_webhook_outbox_next", "webhook_outbox", ["state", "next_attempt_at"])
    op.create_index("ix_webhook_outbox_task", "webhook_outbox", ["task_id", "seq"])
    op.create_table(
        "webhook_attempts",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(40), nullable=False),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=True),
    )
    op.create_index("ix_webhook_attempts_task", "webhook_attempts", ["task_id", "seq"])


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_outbox")
    op.drop_table("idempotency_keys")
    op.drop_table("tasks")
    op.drop_table("api_keys")
