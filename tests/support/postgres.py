"""Throwaway PostgreSQL databases on the local server, for tests that run the real thing."""

from __future__ import annotations

import asyncio
import os
import uuid

ADMIN_URL = os.environ.get(
    "IMAGEGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


class PostgresUnavailable(Exception):
    pass


def _server_url(database: str) -> str:
    base = ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{database}"


async def _admin(sql: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        raise PostgresUnavailable(f"PostgreSQL not reachable at {ADMIN_URL}: {exc}") from exc
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database() -> str:
    """A new empty database; returns its URL. Raises PostgresUnavailable when there is no server."""
    name = "imagegate_t_" + uuid.uuid4().hex[:12]
    asyncio.run(_admin(f"CREATE DATABASE {name}"))
    return _server_url(name)


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
