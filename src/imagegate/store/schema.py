"""The tables, as SQLAlchemy Core metadata. Alembic migrations create them; queries use them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

# SQLite only makes INTEGER PRIMARY KEY an auto-incrementing rowid; PostgreSQL wants BIGINT.
SEQ = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    # Plain text: it must sign every webhook. The key itself is only stored hashed.
    Column("webhook_secret", Text, nullable=False),
    # Kept for a grace period after a rotation; webhooks are signed with both meanwhile.
    Column("previous_webhook_secret", Text, nullable=True),
    Column("previous_secret_expires_at", Float, nullable=True),
)

tasks = Table(
    "tasks",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("owner", String(80), nullable=False),
    Column("status", String(16), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("references", Text, nullable=False),  # JSON list of ReferenceSpec
    Column("options", Text, nullable=False),  # JSON object: aspect_ratio, seed, ...
    Column("webhook_url", Text, nullable=True),
    Column("generated", Text, nullable=False),  # JSON list of GeneratedImage
    Column("error", Text, nullable=True),
    Column("engine", String(40), nullable=True),
    Column("model", String(200), nullable=True),
    Column("text", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("request_id", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("lease_owner", String(80), nullable=True),
    # When a worker may claim the task: its creation time while queued, the lease expiry
    # while running, the retry time after a transient error, NULL once finished.
    Column("available_at", Float, nullable=True),
    Index("ix_tasks_owner_seq", "owner", "seq"),
    Index("ix_tasks_owner_available_at", "owner", "available_at"),
    Index("ix_tasks_available_at", "available_at"),
    # Running tasks only (few rows): finds expired leases without scanning the backlog.
    Index(
        "ix_tasks_leased_available_at",
        "available_at",
        postgresql_where=text("lease_owner IS NOT NULL"),
        sqlite_where=text("lease_owner IS NOT NULL"),
    ),
)

# Idempotency-Key of a POST: the same key and body within the window returns the same task.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("owner", String(80), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("body_hash", String(64), nullable=False),
    Column("task_id", String(36), nullable=False),
    Column("created_at", Float, nullable=False),
)

# One row per webhook message: written in the same transaction as the status change it
# announces, so a committed status change always has its delivery waiting.
webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),  # the webhook-id header
    Column("task_id", String(36), nullable=False),
    Column("owner", String(80), nullable=False),
    Column("request_id", String(64), nullable=True),
    Column("url", Text, nullable=False),
    Column("status", String(16), nullable=False),  # the task status it announces
    Column("payload", Text, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=True),
    Column("lease_owner", String(80), nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_webhook_outbox_next", "state", "next_attempt_at"),
    Index("ix_webhook_outbox_task", "task_id", "seq"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("message_id", String(40), nullable=False),
    Column("task_id", String(36), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Index("ix_webhook_attempts_task", "task_id", "seq"),
)
