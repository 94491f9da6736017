"""Alembic migrations, run on a connection imagegate already holds."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade_to_head(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Many processes may start at once; one migrates, the others wait for it.
        connection.execute(text("SELECT pg_advisory_xact_lock(7215388401)"))
    command.upgrade(alembic_config(connection), "head")
