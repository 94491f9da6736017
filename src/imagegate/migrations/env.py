"""Alembic environment: runs on the connection imagegate hands it (see store/migrate.py)."""

from __future__ import annotations

from alembic import context

from imagegate.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - imagegate always passes its own connection
    raise RuntimeError("run migrations with `imagegate db upgrade`, not the alembic CLI")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
