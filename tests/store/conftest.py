from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imagegate.store.sql import SqlStore
from imagegate.tasks.model import Status, Task

POSTGRES_URL = os.environ.get(
    "IMAGEGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def presenter(task: Task) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "status": task.status.value,
        "generated": [g.key for g in task.generated],
    }


def new_task(owner: str = "owner-a", webhook_url: str | None = None) -> Task:
    now = time.time()
    return Task(
        id=str(uuid.uuid4()),
        owner=owner,
        status=Status.CREATED,
        prompt="a prompt",
        references=[],
        options={},
        webhook_url=webhook_url,
        created_at=now,
        updated_at=now,
    )


async def postgres_schema() -> str:
    """A fresh schema in the local PostgreSQL, or skip the test with the reason."""
    import asyncpg

    try:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    schema = "t_" + uuid.uuid4().hex[:12]
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.close()
    return schema


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
    await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    if request.param == "sqlite":
        s = SqlStore(f"sqlite:///{tmp_path / 'test.db'}", presenter)
        await s.start()
        yield s
        await s.close()
        return
    schema = await postgres_schema()
    pg = SqlStore(POSTGRES_URL, presenter, search_path=schema)
    await pg.start()
    yield pg
    await pg.close()
    await drop_schema(schema)
