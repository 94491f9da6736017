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
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    URL,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Row, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
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
T = TypeVar("T")

# Statements run with executemany (see SqliteWriter.execute): built once, so that the same
# statement from many callers is recognised and batched. Bind names differ from column names,
# as executemany UPDATEs require.
_INSERT_TASK = insert(tasks)
_INSERT_ATTEMPT = insert(webhook_attempts)
_INSERT_OUTBOX = insert(webhook_outbox)
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


def _claim_webhooks_statement() -> Any:
    # Built once (an alias alone costs more than a claim's SQL): values are bound per call.
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
            webhook_outbox.c.next_attempt_at <= bindparam("b_now"),
            ~blocked,
        )
        .order_by(webhook_outbox.c.next_attempt_at)
        .limit(bindparam("b_limit"))
        .with_for_update(skip_locked=True)
    )
    return (
        update(webhook_outbox)
        .where(webhook_outbox.c.seq.in_(candidates.scalar_subquery()))
        .values(
            lease_owner=bindparam("b_worker"),
            next_attempt_at=bindparam("b_until"),
            attempts=webhook_outbox.c.attempts + 1,
            updated_at=bindparam("b_now"),
        )
        .returning(*webhook_outbox.c)
    )


_CLAIM_WEBHOOKS = _claim_webhooks_statement()


def _claim_tasks_statement(expired_lease: bool) -> Any:
    held = tasks.c.lease_owner.is_not(None) if expired_lease else tasks.c.lease_owner.is_(None)
    candidates = (
        select(tasks.c.seq)
        .where(tasks.c.available_at <= bindparam("b_now"), held)
        .order_by(tasks.c.available_at)
        .limit(bindparam("b_limit"))
        .with_for_update(skip_locked=True)
    )
    return (
        update(tasks)
        .where(tasks.c.seq.in_(candidates.scalar_subquery()))
        .values(
            status=Status.IN_PROGRESS.value,
            # A lease still held here means its worker vanished without a word.
            error=case((tasks.c.lease_owner.is_not(None), LEASE_EXPIRED), else_=tasks.c.error),
            lease_owner=bindparam("b_worker"),
            available_at=bindparam("b_until"),
            attempts=tasks.c.attempts + 1,
            started_at=func.coalesce(tasks.c.started_at, bindparam("b_now")),
            updated_at=bindparam("b_now"),
        )
        .returning(*tasks.c)
    )


# Tasks whose worker died (lease held but expired), and tasks nobody holds.
_CLAIM_TASKS = {True: _claim_tasks_statement(True), False: _claim_tasks_statement(False)}


def _claim_params(worker_id: str, now: float, lease_seconds: float, limit: int) -> dict[str, Any]:
    """The values the claim statements above take."""
    return {"b_now": now, "b_limit": limit, "b_worker": worker_id, "b_until": now + lease_seconds}


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
            if not path or path.startswith(":memory:"):
                # Every connection (the writer's, each reader's) would see a database of its own.
                raise ValueError(
                    f"IMAGEGATE_DATABASE_URL={self.url!r}: SQLite needs a file "
                    "(e.g. sqlite:///data/imagegate.db); in-memory databases are not supported"
                )
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(self.url, connect_args={"timeout": 30})
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(engine.sync_engine, "begin", _sqlite_begin)
            # Reads go through the async engine's pool; writes through the writer thread's
            # own connection (same file, synchronous driver).
            self._writer = SqliteWriter(make_url(self.url).set(drivername="sqlite"))
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
        if self._writer is not None:
            self._writer.start()

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

    async def _write(self, fn: Callable[[Connection], T], *, may_fail: bool = False) -> T:
        """Run `fn` in a write transaction and return what it returns. On SQLite: a turn in the
        writer thread's group commit (`may_fail`: in a savepoint of its own, see SqliteWriter);
        elsewhere a transaction of its own, `fn` running through SQLAlchemy's `run_sync`."""
        if self._writer is not None:
            return await self._writer.run(fn, savepoint=may_fail)
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
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
        stmt = insert(api_keys).values(
            id=key.id,
            name=name,
            key_hash=key_hash,
            prefix=prefix,
            created_at=key.created_at,
            webhook_secret=webhook_secret,
        )
        await self._write(lambda conn: conn.execute(stmt), may_fail=True)  # the name may be taken
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
        stmt = (
            update(api_keys)
            .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
            .values(
                previous_webhook_secret=api_keys.c.webhook_secret,
                previous_secret_expires_at=now + grace_seconds,
                webhook_secret=new_secret,
            )
        )
        return await self._write(lambda conn: bool(conn.execute(stmt).rowcount))

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
        stmt = (
            update(api_keys)
            .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
        return await self._write(lambda conn: bool(conn.execute(stmt).rowcount))

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

        def run(conn: Connection) -> None:
            if idempotency is not None:
                # First, so a concurrent duplicate fails on the primary key before any task exists.
                conn.execute(
                    insert(idempotency_keys).values(
                        owner=task.owner,
                        key=idempotency.key,
                        body_hash=idempotency.body_hash,
                        task_id=task.id,
                        created_at=task.created_at,
                    )
                )
            conn.execute(insert(tasks).values(**row))
            self._notify(conn, "created")

        await self._write(run, may_fail=idempotency is not None)

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
        stmt = delete(idempotency_keys).where(idempotency_keys.c.created_at < older_than)
        return await self._write(lambda conn: int(conn.execute(stmt).rowcount or 0))

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

        def run(conn: Connection) -> list[Task]:
            claimed = self._claim(conn, worker_id, now, lease_seconds, limit, expired_lease=True)
            if len(claimed) < limit:
                claimed += self._claim(
                    conn, worker_id, now, lease_seconds, limit - len(claimed), expired_lease=False
                )
            for task in claimed:
                if task.attempts == 1:  # first claim: CREATED -> IN_PROGRESS
                    self._status_changed(conn, task)
            return claimed

        return await self._write(run)

    def _claim(
        self,
        conn: Connection,
        worker_id: str,
        now: float,
        lease_seconds: float,
        limit: int,
        *,
        expired_lease: bool,
    ) -> list[Task]:
        stmt = _CLAIM_TASKS[expired_lease]
        rows = conn.execute(stmt, _claim_params(worker_id, now, lease_seconds, limit)).all()
        # RETURNING gives no order: oldest first, as they were picked.
        return sorted((_task_from_row(r) for r in rows), key=lambda t: (t.created_at, t.id))

    async def renew_lease(self, task_id: str, worker_id: str, lease_seconds: float) -> bool:
        now = time.time()
        stmt = (
            update(tasks)
            .where(
                tasks.c.id == task_id,
                tasks.c.lease_owner == worker_id,
                tasks.c.status == Status.IN_PROGRESS.value,
            )
            .values(available_at=now + lease_seconds, updated_at=now)
        )
        return await self._write(lambda conn: bool(conn.execute(stmt).rowcount))

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

        def run(conn: Connection) -> bool:
            row = conn.execute(stmt).first()
            if row is None:
                return False
            self._status_changed(conn, _task_from_row(row))
            return True

        return await self._write(run)

    async def retry_task(self, task_id: str, worker_id: str, error: str, delay: float) -> bool:
        now = time.time()
        stmt = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.lease_owner == worker_id)
            .values(error=error, lease_owner=None, available_at=now + delay, updated_at=now)
        )
        return await self._write(lambda conn: bool(conn.execute(stmt).rowcount))

    async def release_task(self, task_id: str, worker_id: str) -> bool:
        """Give a running task back without counting the attempt (graceful shutdown)."""
        now = time.time()
        stmt = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.lease_owner == worker_id)
            .values(
                lease_owner=None,
                available_at=now,
                attempts=case((tasks.c.attempts > 0, tasks.c.attempts - 1), else_=0),
                updated_at=now,
            )
        )
        return await self._write(lambda conn: bool(conn.execute(stmt).rowcount))

    async def purge_tasks(self, older_than: float) -> list[Task]:
        """Delete finished tasks created before `older_than`; returns them so blobs can go too."""

        def run(conn: Connection) -> list[Task]:
            rows = conn.execute(
                delete(tasks)
                .where(tasks.c.created_at < older_than, tasks.c.available_at.is_(None))
                .returning(*tasks.c)
            ).all()
            ids = [r._mapping["id"] for r in rows]
            if ids:
                conn.execute(delete(webhook_outbox).where(webhook_outbox.c.task_id.in_(ids)))
                conn.execute(delete(webhook_attempts).where(webhook_attempts.c.task_id.in_(ids)))
            return [_task_from_row(r) for r in rows]

        return await self._write(run)

    # --- webhook outbox ---------------------------------------------------------------
    def _notify(self, conn: Connection, payload: str) -> None:
        """Tell other processes (PostgreSQL LISTEN/NOTIFY), delivered when the transaction commits."""
        if not self.is_sqlite:
            conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, payload)))

    def _status_changed(self, conn: Connection, task: Task) -> None:
        self._notify(conn, f"changed:{task.id}")
        if not task.webhook_url:
            return
        self._notify(conn, "webhook")
        now = time.time()
        conn.execute(
            _INSERT_OUTBOX,
            {
                "id": "msg_" + secrets.token_urlsafe(18),
                "task_id": task.id,
                "owner": task.owner,
                "request_id": task.request_id,
                "url": task.webhook_url,
                "status": task.status.value,
                "payload": json.dumps(self.presenter(task), separators=(",", ":")),
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            },
        )

    async def claim_webhooks(
        self, worker_id: str, lease_seconds: float, limit: int
    ) -> list[OutboxMessage]:
        now = time.time()
        params = _claim_params(worker_id, now, lease_seconds, limit)
        rows = await self._write(lambda conn: conn.execute(_CLAIM_WEBHOOKS, params).all())
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

        def run(conn: Connection) -> None:
            for statement, params in statements:
                conn.execute(statement, params)

        await self._write(run)

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


@dataclass(eq=False)
class _Job:
    """One write for the writer thread: a function to run, or statements to coalesce."""

    fn: Callable[[Connection], Any] | None
    statements: tuple[tuple[Executable, dict[str, Any]], ...]
    savepoint: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class SqliteWriter:
    """Group commit for SQLite, which has one writer at a time, in a thread of its own.

    Left alone, concurrent write transactions fight over the database lock and SQLite's busy
    handler sleeps them for up to 100 ms a try. Here every write is handed to one thread that
    owns the only writing connection: it takes whatever writes are queued, runs them one after
    another in one transaction and commits once (one fsync) as soon as the queue is empty. A
    write's caller gets its answer only once that commit is done.

    Each write runs whole in the thread (`fn(connection)`, synchronous SQLAlchemy): one
    hand-off per write instead of the four thread hops per statement of the async driver, and
    no statement work on the event loop. Statements that need no answer (`execute`) are
    coalesced with their neighbours into one executemany per statement.

    A write that may fail as part of normal operation (an Idempotency-Key or key name taken by a
    concurrent request) runs in a savepoint and fails alone. Other writes run without one; if
    such a write fails anyway (a bug, a full disk), the whole batch is rolled back and every
    write in it fails: never half-written.
    """

    MAX_BATCH = 256

    def __init__(self, url: str | URL) -> None:
        self.engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(self.engine, "connect", _sqlite_pragmas)
        event.listen(self.engine, "begin", _sqlite_begin)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name="imagegate-sqlite-writer", daemon=True
        )
        self._closed = False
        self.commits = 0  # how many transactions carried the writes (for tests and metrics)

    def start(self) -> None:
        self._thread.start()

    async def run(self, fn: Callable[[Connection], T], *, savepoint: bool = False) -> T:
        """`fn(connection)` in the writer thread, inside the batch's transaction; its result
        once committed."""
        result: T = await self._submit(fn, (), savepoint)
        return result

    async def execute(self, *statements: tuple[Executable, dict[str, Any]]) -> None:
        """Statements that need no answer, coalesced with those other callers submit
        meanwhile: one executemany per distinct statement. Returns once committed."""
        await self._submit(None, statements, False)

    def _submit(
        self,
        fn: Callable[[Connection], Any] | None,
        statements: tuple[tuple[Executable, dict[str, Any]], ...],
        savepoint: bool,
    ) -> asyncio.Future[Any]:
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(_Job(fn, statements, savepoint, loop, future))
        return future

    async def close(self) -> None:
        """Finish what is queued, commit it, stop the thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
        self.engine.dispose()

    # --- the writer thread ----------------------------------------------------------------
    def _serve(self) -> None:
        try:
            conn = self.engine.connect()
        except Exception as exc:
            log.error("the SQLite writer could not open the database: %s", exc)
            while (job := self._jobs.get()) is not None:
                _settle([(job, None, exc)])
            return
        with conn:
            while (job := self._jobs.get()) is not None:
                if not self._batch(conn, job):
                    break

    def _batch(self, conn: Connection, job: _Job) -> bool:
        """Run `job` and whatever else is queued in one transaction; False once told to stop."""
        batch: list[_Job] = []
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        pending: list[_Job] = []  # statement jobs not executed yet
        failing: list[_Job] = []  # the write(s) running when an error came
        keep_going = True
        transaction = conn.begin()
        try:
            while True:
                batch.append(job)
                if job.fn is None:
                    pending.append(job)
                else:
                    failing = list(pending)
                    self._execute_pending(conn, pending, outcomes)
                    failing = [job]
                    outcomes.append(self._run_one(conn, job))
                failing = []
                if len(batch) >= self.MAX_BATCH:
                    break
                try:
                    next_job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if next_job is None:
                    keep_going = False
                    break
                job = next_job
            failing = list(pending)
            self._execute_pending(conn, pending, outcomes)
            failing = []
            transaction.commit()
            self.commits += 1
        except BaseException as exc:
            with contextlib.suppress(Exception):
                transaction.rollback()
            others = RuntimeError("a write in the same batch failed; nothing was written")
            others.__cause__ = exc
            outcomes = [(each, None, exc if each in failing else others) for each in batch]
        _settle(outcomes)
        return keep_going

    @staticmethod
    def _run_one(conn: Connection, job: _Job) -> tuple[_Job, Any, BaseException | None]:
        assert job.fn is not None
        if not job.savepoint:
            return job, job.fn(conn), None  # a failure here fails the batch (see _serve)
        try:
            with conn.begin_nested():
                return job, job.fn(conn), None
        except Exception as exc:
            # Rolled back to its savepoint. Its caller hears of it once the batch is committed,
            # so what it conflicted with is visible to its next read.
            return job, None, exc

    @staticmethod
    def _execute_pending(
        conn: Connection,
        pending: list[_Job],
        outcomes: list[tuple[_Job, Any, BaseException | None]],
    ) -> None:
        if not pending:
            return
        by_statement: dict[Executable, list[dict[str, Any]]] = {}
        for job in pending:
            for statement, params in job.statements:
                by_statement.setdefault(statement, []).append(params)
        for statement, rows in by_statement.items():
            conn.execute(statement, rows)
        outcomes.extend((job, None, None) for job in pending)
        pending.clear()


def _settle(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
    """Hand a committed (or failed) batch's answers to the event loops that wait for them."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, answers in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_answer, answers)


def _answer(answers: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for job, result, error in answers:
        if job.future.done():  # its caller was cancelled meanwhile
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


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
