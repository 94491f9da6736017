"""The SQL store: one implementation for SQLite (embedded default) and PostgreSQL (scale-out).

Claiming is a single `UPDATE ... WHERE seq = (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`,
which PostgreSQL runs with row locks and SQLite runs under its one-writer lock. Every state
change that a webhook announces writes its outbox row in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, event, func, insert, select, update
from sqlalchemy.engine import Row, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import Executable, Select

from imagegate.store.base import (
    DeliveryRecord,
    Idempotency,
    IdempotencyKeyTaken,
    OutboxMessage,
    Presenter,
    QueueStats,
    StoreEventHandler,
)
from imagegate.store.migrate import upgrade_to_head
from imagegate.store.schema import (
    api_keys,
    idempotency_keys,
    tasks,
    webhook_attempts,
    webhook_outbox,
)
from imagegate.tasks.model import (
    ApiKey,
    GeneratedImage,
    ReferenceSpec,
    Status,
    Task,
    statuses_before,
)

log = logging.getLogger("imagegate.store")

# Statements run with executemany (see SqliteWriter.execute): built once, so that the same
# statement from many callers is recognised and batched. Bind names differ from column names,
# as executemany UPDATEs require.
_INSERT_TASK = insert(tasks)
_INSERT_ATTEMPT = insert(webhook_attempts)
_RECORD_DELIVERY = (
    update(webhook_outbox)
    .where(
        webhook_outbox.c.id == bindparam("b_id"),
        webhook_outbox.c.lease_owner == bindparam("b_worker"),
    )
    .values(
        state=bindparam("b_state"),
        next_attempt_at=bindparam("b_next"),
        lease_owner=None,
        last_status_code=bindparam("b_code"),
        last_error=bindparam("b_error"),
        updated_at=bindparam("b_now"),
    )
)
NOTIFY_CHANNEL = "imagegate"
LEASE_EXPIRED = "the worker running the previous attempt stopped responding (its lease expired)"


def normalize_database_url(url: str) -> str:
    """Accept the URLs users write (`postgresql://`, `sqlite:///`) and pick the async driver."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def _task_from_row(row: Row[Any]) -> Task:
    m = row._mapping
    return Task(
        id=m["id"],
        owner=m["owner"],
        status=Status(m["status"]),
        prompt=m["prompt"],
        references=[ReferenceSpec.from_json(r) for r in json.loads(m["references"])],
        options=json.loads(m["options"]),
        webhook_url=m["webhook_url"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        generated=[GeneratedImage.from_json(g) for g in json.loads(m["generated"])],
        error=m["error"],
        engine=m["engine"],
        model=m["model"],
        text=m["text"],
        attempts=m["attempts"],
        request_id=m["request_id"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        lease_owner=m["lease_owner"],
        available_at=m["available_at"],
    )


def _key_from_row(row: Row[Any]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        name=m["name"],
        prefix=m["prefix"],
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
    )


class SqlStore:
    def __init__(self, url: str, presenter: Presenter, *, search_path: str | None = None) -> None:
        self.url = normalize_database_url(url)
        # PostgreSQL schema to work in (tests give each run its own; deployments leave it unset).
        self.search_path = search_path
        self.presenter = presenter
        self.is_sqlite = self.url.startswith("sqlite")
        self._engine: AsyncEngine | None = None
        self._listener: asyncio.Task[None] | None = None
        self._writer: SqliteWriter | None = None

    # --- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        if self.is_sqlite:
            path = self.url.split("///", 1)[1] if "///" in self.url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(self.url, connect_args={"timeout": 30})
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(engine.sync_engine, "begin", _sqlite_begin)
            self._writer = SqliteWriter(engine)
        else:
            connect_args: dict[str, Any] = {}
            if self.search_path:
                connect_args["server_settings"] = {"search_path": self.search_path}
            engine = create_async_engine(
                self.url,
                pool_size=10,
                max_overflow=20,
                pool_pre_ping=True,
                connect_args=connect_args,
            )
        self._engine = engine
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to_head)

    async def listen(self, handler: StoreEventHandler) -> None:
        """Call `handler(kind, task_id)` for changes made by any process: "created",
        "changed" (with the task id) and "webhook". PostgreSQL only; SQLite deployments are
        one process, which hears its own changes directly."""
        if self.is_sqlite or self._listener is not None:
            return
        self._listener = asyncio.create_task(self._listen_forever(handler), name="imagegate-listen")

    async def _listen_forever(self, handler: StoreEventHandler) -> None:
        import asyncpg

        dsn = make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)
        settings = {"search_path": self.search_path} if self.search_path else None
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(dsn, server_settings=settings)
                lost = asyncio.Event()

                def on_lost(_conn: Any, event: asyncio.Event = lost) -> None:
                    event.set()

                conn.add_termination_listener(on_lost)

                def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                    kind, _, task_id = payload.partition(":")
                    handler(kind, task_id or None)

                await conn.add_listener(NOTIFY_CHANNEL, on_notify)
                delay = 0.5
                # Anything created while we were not listening is picked up now.
                handler("created", None)
                handler("webhook", None)
                await lost.wait()
                log.warning("lost the PostgreSQL notification connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "PostgreSQL notifications unavailable (%s); retrying in %.1f s", exc, delay
                )
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _transaction(
        self, *, may_fail: bool = False
    ) -> AbstractAsyncContextManager[AsyncConnection]:
        """A write transaction: on SQLite a turn in a group commit (`may_fail`: in a savepoint
        of its own, see SqliteWriter), elsewhere a transaction of its own."""
        if self._writer is not None:
            return self._writer.transaction(savepoint=may_fail)
        return self.engine.begin()

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.flush()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("store not started")
        return self._engine

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    # --- keys -----------------------------------------------------------------------
    async def create_key(
        self, name: str, key_hash: str, prefix: str, webhook_secret: str
    ) -> ApiKey:
        key = ApiKey(
            id="key_" + secrets.token_hex(8), name=name, prefix=prefix, created_at=time.time()
        )
        async with self._transaction(may_fail=True) as conn:  # the name may be taken
            await conn.execute(
                insert(api_keys).values(
                    id=key.id,
                    name=name,
                    key_hash=key_hash,
                    prefix=prefix,
                    created_at=key.created_at,
                    webhook_secret=webhook_secret,
                )
            )
        return key

    async def webhook_secrets(self, owner: str) -> list[str]:
        now = time.time()
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        api_keys.c.webhook_secret,
                        api_keys.c.previous_webhook_secret,
                        api_keys.c.previous_secret_expires_at,
                    ).where(api_keys.c.id == owner)
                )
            ).first()
        if row is None:
            return []
        found = [row.webhook_secret]
        if row.previous_webhook_secret and (row.previous_secret_expires_at or 0) > now:
            found.append(row.previous_webhook_secret)
        return found

    async def rotate_webhook_secret(self, name: str, new_secret: str, grace_seconds: float) -> bool:
        now = time.time()
        async with self._transaction() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
                .values(
                    previous_webhook_secret=api_keys.c.webhook_secret,
                    previous_secret_expires_at=now + grace_seconds,
                    webhook_secret=new_secret,
                )
            )
        return bool(result.rowcount)

    async def find_key(self, key_hash: str) -> ApiKey | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(api_keys).where(
                        api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)
                    )
                )
            ).first()
        return _key_from_row(row) if row else None

    async def list_keys(self) -> list[ApiKey]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(api_keys).order_by(api_keys.c.created_at))).all()
        return [_key_from_row(r) for r in rows]

    async def revoke_key(self, name: str) -> bool:
        async with self._transaction() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return bool(result.rowcount)

    async def count_keys(self) -> int:
        async with self.engine.connect() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(api_keys))).scalar_one()
            )

    # --- tasks: API side ------------------------------------------------------------
    async def create_task(self, task: Task, idempotency: Idempotency | None = None) -> None:
        try:
            await self._insert_task(task, idempotency)
        except IntegrityError as exc:
            if idempotency is not None and "idempotency" in str(exc.orig).lower():
                raise IdempotencyKeyTaken(idempotency.key) from None
            raise

    async def _insert_task(self, task: Task, idempotency: Idempotency | None) -> None:
        row = {
            "id": task.id,
            "owner": task.owner,
            "status": task.status.value,
            "prompt": task.prompt,
            "references": json.dumps([r.to_json() for r in task.references]),
            "options": json.dumps(task.options),
            "webhook_url": task.webhook_url,
            "generated": "[]",
            "attempts": 0,
            "request_id": task.request_id,
            "created_at": task.created_at,
            "updated_at": task.updated_at,
            "available_at": task.created_at,
        }
        if idempotency is None and self._writer is not None:
            # The hot path of POST: rows of concurrent creates go in one executemany.
            await self._writer.execute((_INSERT_TASK, row))
            return
        async with self._transaction(may_fail=idempotency is not None) as conn:
            if idempotency is not None:
                # First, so a concurrent duplicate fails on the primary key before any task exists.
                await conn.execute(
                    insert(idempotency_keys).values(
                        owner=task.owner,
                        key=idempotency.key,
                        body_hash=idempotency.body_hash,
                        task_id=task.id,
                        created_at=task.created_at,
                    )
                )
            await conn.execute(insert(tasks).values(**row))
            await self._notify(conn, "created")

    async def find_idempotent(self, owner: str, key: str, since: float) -> Idempotency | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(idempotency_keys).where(
                        idempotency_keys.c.owner == owner,
                        idempotency_keys.c.key == key,
                        idempotency_keys.c.created_at >= since,
                    )
                )
            ).first()
        return Idempotency(row.key, row.body_hash, row.task_id) if row else None

    async def forget_idempotency(self, older_than: float) -> int:
        async with self._transaction() as conn:
            result = await conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.created_at < older_than)
            )
        return int(result.rowcount or 0)

    async def count_unfinished(self, owner: str) -> int:
        async with self.engine.connect() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count())
                        .select_from(tasks)
                        .where(tasks.c.owner == owner, tasks.c.available_at.is_not(None))
                    )
                ).scalar_one()
            )

    async def get_task(self, task_id: str, owner: str | None = None) -> Task | None:
        query = select(tasks).where(tasks.c.id == task_id)
        if owner is not None:
            query = query.where(tasks.c.owner == owner)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _task_from_row(row) if row else None

    async def list_tasks(self, owner: str, offset: int, limit: int) -> list[Task]:
        query = (
            select(tasks)
            .where(tasks.c.owner == owner)
            .order_by(tasks.c.seq.desc())
            .offset(offset)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_task_from_row(r) for r in rows]

    async def queue_stats(self) -> QueueStats:
        now = time.time()
        queued = and_(tasks.c.available_at.is_not(None), tasks.c.lease_owner.is_(None))
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        func.count().filter(queued),
                        func.count().filter(tasks.c.lease_owner.is_not(None)),
                        func.min(tasks.c.created_at).filter(queued),
                    ).where(tasks.c.available_at.is_not(None))
                )
            ).one()
            backlog = (
                await conn.execute(
                    select(func.count())
                    .select_from(webhook_outbox)
                    .where(webhook_outbox.c.state == "pending")
                )
            ).scalar_one()
        oldest = row[2]
        return QueueStats(
            queued=row[0],
            running=row[1],
            oldest_queued_age=(now - oldest) if oldest else 0.0,
            webhook_backlog=int(backlog),
        )

    # --- tasks: worker side ---------------------------------------------------------
    async def claim_task(self, worker_id: str, lease_seconds: float) -> Task | None:
        claimed = await self.claim_tasks(worker_id, lease_seconds, 1)
        return claimed[0] if claimed else None

    async def claim_tasks(self, worker_id: str, lease_seconds: float, limit: int) -> list[Task]:
        """Up to `limit` due tasks, leased to `worker_id`, in one transaction.

        Tasks whose worker died go first: they were already IN_PROGRESS and have waited
        longest, and a backlog of new tasks must not keep them stranded on a dead lease.
        """
        now = time.time()
        async with self._transaction() as conn:
            claimed = await self._claim(
                conn, worker_id, now, lease_seconds, limit, expired_lease=True
            )
            if len(claimed) < limit:
                claimed += await self._claim(
                    conn, worker_id, now, lease_seconds, limit - len(claimed), expired_lease=False
                )
            for task in claimed:
                if task.attempts == 1:  # first claim: CREATED -> IN_PROGRESS
                    await self._status_changed(conn, task)
        return claimed

    async def _claim(
        self,
        conn: AsyncConnection,
        worker_id: str,
        now: float,
        lease_seconds: float,
        limit: int,
        *,
        expired_lease: bool,
    ) -> list[Task]:
        held = tasks.c.lease_owner.is_not(None) if expired_lease else tasks.c.lease_owner.is_(None)
        candidates = (
            select(tasks.c.seq)
            .where(tasks.c.available_at <= now, held)
            .order_by(tasks.c.available_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(tasks)
            .where(tasks.c.seq.in_(candidates.scalar_subquery()))
            .values(
                status=Status.IN_PROGRESS.value,
                # A lease still held here means its worker vanished without a word.
                error=case((tasks.c.lease_owner.is_not(None), LEASE_EXPIRED), else_=tasks.c.error),
                lease_owner=worker_id,
                available_at=now + lease_seconds,
                attempts=tasks.c.attempts + 1,
                started_at=func.coalesce(tasks.c.started_at, now),
                updated_at=now,
            )
            .returning(*tasks.c)
        )
        rows = (await conn.execute(stmt)).all()
        # RETURNING gives no order: oldest first, as they were picked.
        return sorted((_task_from_row(r) for r in rows), key=lambda t: (t.created_at, t.id))

    async def renew_lease(self, task_id: str, worker_id: str, lease_seconds: float) -> bool:
        now = time.time()
        async with self._transaction() as conn:
            result = await conn.execute(
                update(tasks)
                .where(
                    tasks.c.id == task_id,
                    tasks.c.lease_owner == worker_id,
                    tasks.c.status == Status.IN_PROGRESS.value,
                )
                .values(available_at=now + lease_seconds, updated_at=now)
            )
        return bool(result.rowcount)

    async def complete_task(
        self,
        task_id: str,
        worker_id: str,
        generated: list[GeneratedImage],
        *,
        engine: str,
        model: str | None,
        text: str | None,
    ) -> bool:
        return await self._finish(
            task_id,
            worker_id,
            status=Status.COMPLETED,
            generated=json.dumps([g.to_json() for g in generated]),
            engine=engine,
            model=model,
            text=text,
            error=None,
        )

    async def fail_task(self, task_id: str, worker_id: str | None, error: str) -> bool:
        return await self._finish(task_id, worker_id, status=Status.FAILED, error=error)

    async def _finish(
        self, task_id: str, worker_id: str | None, *, status: Status, **values: Any
    ) -> bool:
        now = time.time()
        conditions = [
            tasks.c.id == task_id,
            tasks.c.status.in_([s.value for s in statuses_before(status)]),
        ]
        if worker_id is not None:
            # Fencing: only the worker that holds the lease may finish the task, so a task
            # whose lease was taken over is never finished twice.
            conditions.append(tasks.c.lease_owner == worker_id)
        stmt = (
            update(tasks)
            .where(*conditions)
            .values(
                status=status.value,
                finished_at=now,
                updated_at=now,
                available_at=None,
                lease_owner=None,
                **values,
            )
            .returning(*tasks.c)
        )
        async with self._transaction() as conn:
            row = (await conn.execute(stmt)).first()
            if row is None:
                return False
            await self._status_changed(conn, _task_from_row(row))
        return True

    async def retry_task(self, task_id: str, worker_id: str, error: str, delay: float) -> bool:
        now = time.time()
        async with self._transaction() as conn:
            result = await conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.lease_owner == worker_id)
                .values(error=error, lease_owner=None, available_at=now + delay, updated_at=now)
            )
        return bool(result.rowcount)

    async def release_task(self, task_id: str, worker_id: str) -> bool:
        """Give a running task back without counting the attempt (graceful shutdown)."""
        now = time.time()
        async with self._transaction() as conn:
            result = await conn.execute(
                update(tasks)
                .where(tasks.c.id == task_id, tasks.c.lease_owner == worker_id)
                .values(
                    lease_owner=None,
                    available_at=now,
                    attempts=case((tasks.c.attempts > 0, tasks.c.attempts - 1), else_=0),
                    updated_at=now,
                )
            )
        return bool(result.rowcount)

    async def purge_tasks(self, older_than: float) -> list[Task]:
        """Delete finished tasks created before `older_than`; returns them so blobs can go too."""
        async with self._transaction() as conn:
            rows = (
                await conn.execute(
                    delete(tasks)
                    .where(tasks.c.created_at < older_than, tasks.c.available_at.is_(None))
                    .returning(*tasks.c)
                )
            ).all()
            ids = [r._mapping["id"] for r in rows]
            if ids:
                await conn.execute(delete(webhook_outbox).where(webhook_outbox.c.task_id.in_(ids)))
                await conn.execute(
                    delete(webhook_attempts).where(webhook_attempts.c.task_id.in_(ids))
                )
        return [_task_from_row(r) for r in rows]

    # --- webhook outbox ---------------------------------------------------------------
    async def _notify(self, conn: AsyncConnection, payload: str) -> None:
        """Tell other processes (PostgreSQL LISTEN/NOTIFY), delivered when the transaction commits."""
        if not self.is_sqlite:
            await conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, payload)))

    async def _status_changed(self, conn: AsyncConnection, task: Task) -> None:
        await self._notify(conn, f"changed:{task.id}")
        if not task.webhook_url:
            return
        await self._notify(conn, "webhook")
        now = time.time()
        await conn.execute(
            insert(webhook_outbox).values(
                id="msg_" + secrets.token_urlsafe(18),
                task_id=task.id,
                owner=task.owner,
                request_id=task.request_id,
                url=task.webhook_url,
                status=task.status.value,
                payload=json.dumps(self.presenter(task), separators=(",", ":")),
                state="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
        )

    async def claim_webhooks(
        self, worker_id: str, lease_seconds: float, limit: int
    ) -> list[OutboxMessage]:
        now = time.time()
        earlier = webhook_outbox.alias("earlier")
        # Per task, a message waits until every earlier message of that task is settled.
        blocked = (
            select(earlier.c.seq)
            .where(
                earlier.c.task_id == webhook_outbox.c.task_id,
                earlier.c.seq < webhook_outbox.c.seq,
                earlier.c.state == "pending",
            )
            .exists()
        )
        candidates: Select[Any] = (
            select(webhook_outbox.c.seq)
            .where(
                webhook_outbox.c.state == "pending",
                webhook_outbox.c.next_attempt_at <= now,
                ~blocked,
            )
            .order_by(webhook_outbox.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(webhook_outbox)
            .where(webhook_outbox.c.seq.in_(candidates.scalar_subquery()))
            .values(
                lease_owner=worker_id,
                next_attempt_at=now + lease_seconds,
                attempts=webhook_outbox.c.attempts + 1,
                updated_at=now,
            )
            .returning(*webhook_outbox.c)
        )
        async with self._transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            OutboxMessage(
                id=r.id,
                task_id=r.task_id,
                owner=r.owner,
                request_id=r.request_id,
                url=r.url,
                status=r.status,
                payload=r.payload,
                attempts=r.attempts,
                created_at=r.created_at,
            )
            for r in rows
        ]

    async def record_webhook_attempt(
        self,
        message_id: str,
        worker_id: str,
        *,
        task_id: str,
        attempt: int,
        status_code: int | None,
        error: str | None,
        duration_ms: float,
        next_attempt_at: float | None,
        state: str,
    ) -> None:
        now = time.time()
        # The message is settled only while `worker_id` still holds its lease; the attempt
        # is history either way: it happened.
        await self._execute(
            (
                _RECORD_DELIVERY,
                {
                    "b_id": message_id,
                    "b_worker": worker_id,
                    "b_state": state,
                    "b_next": next_attempt_at,
                    "b_code": status_code,
                    "b_error": error,
                    "b_now": now,
                },
            ),
            (
                _INSERT_ATTEMPT,
                {
                    "message_id": message_id,
                    "task_id": task_id,
                    "attempt": attempt,
                    "at": now,
                    "status_code": status_code,
                    "error": error,
                    "duration_ms": duration_ms,
                },
            ),
        )

    async def _execute(self, *statements: tuple[Executable, dict[str, Any]]) -> None:
        """Statements that need no answer, in one transaction; on SQLite coalesced with
        other callers' into one executemany per statement."""
        if self._writer is not None:
            await self._writer.execute(*statements)
            return
        async with self._transaction() as conn:
            for statement, params in statements:
                await conn.execute(statement, params)

    async def webhook_history(self, task_id: str, owner: str) -> list[DeliveryRecord]:
        async with self.engine.connect() as conn:
            messages = (
                await conn.execute(
                    select(webhook_outbox)
                    .where(webhook_outbox.c.task_id == task_id, webhook_outbox.c.owner == owner)
                    .order_by(webhook_outbox.c.seq)
                )
            ).all()
            attempts = (
                await conn.execute(
                    select(webhook_attempts)
                    .where(webhook_attempts.c.task_id == task_id)
                    .order_by(webhook_attempts.c.seq)
                )
            ).all()
        by_message: dict[str, list[dict[str, Any]]] = {}
        for a in attempts:
            by_message.setdefault(a.message_id, []).append(
                {
                    "attempt": a.attempt,
                    "at": a.at,
                    "status_code": a.status_code,
                    "error": a.error,
                    "duration_ms": a.duration_ms,
                }
            )
        return [
            DeliveryRecord(
                id=m.id,
                status=m.status,
                url=m.url,
                state=m.state,
                attempts=m.attempts,
                next_attempt_at=m.next_attempt_at if m.state == "pending" else None,
                last_status_code=m.last_status_code,
                last_error=m.last_error,
                created_at=m.created_at,
                history=by_message.get(m.id, []),
            )
            for m in messages
        ]


class SqliteWriter:
    """Group commit for SQLite, which has one writer at a time.

    Left alone, concurrent write transactions fight over the database lock and SQLite's busy
    handler sleeps them for up to 100 ms a try. Here writes take turns on an in-process lock
    instead, inside one shared transaction that commits as soon as nobody is waiting: the
    writes that queued up meanwhile share one commit (one fsync). A write's caller returns
    only once that commit is done.

    A write that may fail as part of normal operation (an Idempotency-Key taken by a
    concurrent request) runs in a savepoint and fails alone. Savepoints cost two extra round
    trips, so other writes run without one; if such a write fails anyway (a bug, a full
    disk), the whole batch is rolled back and every write in it fails: never half-written.
    """

    MAX_BATCH = 128

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.lock = asyncio.Lock()  # FIFO: writers already waiting go before a queued commit
        self._conn: AsyncConnection | None = None
        self._tx: Any = None
        self._committed: asyncio.Future[None] | None = None
        self._ops = 0
        self._commit_task: asyncio.Task[None] | None = None
        self.commits = 0  # how many transactions carried the writes (for tests and metrics)
        self._queued: list[
            tuple[tuple[tuple[Executable, dict[str, Any]], ...], asyncio.Future[None]]
        ] = []
        self._flusher: asyncio.Task[None] | None = None
        self._poisoned: BaseException | None = None

    @contextlib.asynccontextmanager
    async def transaction(self, savepoint: bool = False) -> AsyncIterator[AsyncConnection]:
        async with self.lock:
            if self._conn is None:
                self._conn = await self.engine.connect()
                self._tx = await self._conn.begin()
                self._committed = asyncio.get_running_loop().create_future()
                self._ops = 0
                self._poisoned = None
            conn, committed = self._conn, self._committed
            assert committed is not None
            failure: Exception | None = None
            try:
                if savepoint:
                    try:
                        async with conn.begin_nested():
                            yield conn
                    except Exception as exc:
                        # Rolled back to its savepoint. Its caller hears of it once the batch
                        # is committed, so what it conflicted with is visible to its next read.
                        failure = exc
                else:
                    try:
                        yield conn
                    except BaseException as exc:
                        self._poisoned = exc
                        raise
            finally:
                self._ops += 1
                if self._ops >= self.MAX_BATCH:
                    await self._commit()
                elif self._commit_task is None or self._commit_task.done():
                    self._commit_task = asyncio.create_task(self._commit_when_idle())
        if failure is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(committed)
            raise failure
        await asyncio.shield(committed)

    async def execute(self, *statements: tuple[Executable, dict[str, Any]]) -> None:
        """Run statements that need no answer, coalesced with those other callers submit
        meanwhile: one executemany per distinct statement, all in one transaction. Returns
        once committed."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((statements, waiter))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await waiter

    async def _flush(self) -> None:
        while self._queued:
            batch: list[tuple[tuple[tuple[Executable, dict[str, Any]], ...], asyncio.Future[None]]]
            batch = []
            try:
                async with self.transaction() as conn:
                    # Taken once the lock is ours: what arrived while we waited comes too.
                    batch, self._queued = self._queued, []
                    by_statement: dict[Executable, list[dict[str, Any]]] = {}
                    for statements, _ in batch:
                        for statement, params in statements:
                            by_statement.setdefault(statement, []).append(params)
                    for statement, rows in by_statement.items():
                        await conn.execute(statement, rows)
            except BaseException as exc:
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _commit_when_idle(self) -> None:
        async with self.lock:
            await self._commit()

    async def _commit(self) -> None:
        conn, tx, committed = self._conn, self._tx, self._committed
        self._conn = self._tx = self._committed = None
        if conn is None or committed is None:
            return
        self.commits += 1
        try:
            if self._poisoned is not None:
                raise RuntimeError(
                    "a write in the same batch failed; nothing was written"
                ) from self._poisoned
            await tx.commit()
        except BaseException as exc:
            committed.set_exception(exc)
            committed.exception()  # retrieved: waiters that left must not warn about it
            with contextlib.suppress(Exception):
                await tx.rollback()
        else:
            committed.set_result(None)
        finally:
            await conn.close()

    async def flush(self) -> None:
        async with self.lock:
            await self._commit()


def _sqlite_begin(conn: Any) -> None:
    # With the driver's own transaction handling off (see _sqlite_pragmas), SQLAlchemy's
    # savepoints work; transactions then start here.
    conn.exec_driver_sql("BEGIN")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite/aiosqlite open transactions on their own and break SAVEPOINT; SQLAlchemy's
    # documented remedy is to turn that off and emit BEGIN ourselves (_sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a task is on disk before its 200, even if the machine (not just the process) dies.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
