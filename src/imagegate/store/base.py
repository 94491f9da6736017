"""The one interface every store implements (SQLite and PostgreSQL share `store.sql.SqlStore`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from imagegate.tasks.model import ApiKey, GeneratedImage, Task

# Renders a task the way clients see it (the GET body without the `data` wrapper);
# the store calls it to write webhook messages in the same transaction as a status change.
Presenter = Callable[[Task], dict[str, Any]]
# Called with ("created", None), ("changed", task_id) or ("webhook", None).
StoreEventHandler = Callable[[str, str | None], None]


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: str
    task_id: str
    owner: str
    request_id: str | None
    url: str
    status: str
    payload: str
    attempts: int
    created_at: float


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """A webhook message of a task, with its history, for the owner to debug a receiver."""

    id: str
    status: str
    url: str
    state: str
    attempts: int
    next_attempt_at: float | None
    last_status_code: int | None
    last_error: str | None
    created_at: float
    history: list[dict[str, Any]]


class IdempotencyKeyTaken(Exception):
    """Another request with the same Idempotency-Key created its task first."""


@dataclass(frozen=True, slots=True)
class Idempotency:
    key: str
    body_hash: str
    task_id: str


@dataclass(frozen=True, slots=True)
class QueueStats:
    queued: int
    running: int
    oldest_queued_age: float
    webhook_backlog: int = 0


class Store(Protocol):
    """Tasks, keys and the webhook outbox. Every method is one transaction."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def listen(self, handler: StoreEventHandler) -> None: ...

    # --- keys ---------------------------------------------------------------
    async def create_key(
        self, name: str, key_hash: str, prefix: str, webhook_secret: str
    ) -> ApiKey: ...
    async def webhook_secrets(self, owner: str) -> list[str]:
        """The secrets this key's webhooks are signed with: the current one, then the previous
        one while its rotation grace period lasts."""
        ...

    async def rotate_webhook_secret(
        self, name: str, new_secret: str, grace_seconds: float
    ) -> bool: ...
    async def find_key(self, key_hash: str) -> ApiKey | None: ...
    async def list_keys(self) -> list[ApiKey]: ...
    async def revoke_key(self, name: str) -> bool: ...
    async def count_keys(self) -> int: ...

    # --- tasks: the API side ----------------------------------------------------
    async def create_task(self, task: Task, idempotency: Idempotency | None = None) -> None: ...
    async def find_idempotent(self, owner: str, key: str, since: float) -> Idempotency | None: ...
    async def forget_idempotency(self, older_than: float) -> int: ...
    async def count_unfinished(self, owner: str) -> int: ...
    async def purge_tasks(self, older_than: float) -> list[Task]: ...
    async def get_task(self, task_id: str, owner: str | None = None) -> Task | None: ...
    async def list_tasks(self, owner: str, offset: int, limit: int) -> list[Task]: ...
    async def queue_stats(self) -> QueueStats: ...

    # --- tasks: the worker side -------------------------------------------------
    async def claim_task(self, worker_id: str, lease_seconds: float) -> Task | None: ...
    async def claim_tasks(self, worker_id: str, lease_seconds: float, limit: int) -> list[Task]: ...
    async def renew_lease(self, task_id: str, worker_id: str, lease_seconds: float) -> bool: ...
    async def complete_task(
        self,
        task_id: str,
        worker_id: str,
        generated: list[GeneratedImage],
        *,
        engine: str,
        model: str | None,
        text: str | None,
    ) -> bool: ...
    async def fail_task(self, task_id: str, worker_id: str | None, error: str) -> bool: ...
    async def retry_task(self, task_id: str, worker_id: str, error: str, delay: float) -> bool: ...
    async def release_task(self, task_id: str, worker_id: str) -> bool: ...

    # --- webhook outbox ---------------------------------------------------------
    async def claim_webhooks(
        self, worker_id: str, lease_seconds: float, limit: int
    ) -> list[OutboxMessage]: ...
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
    ) -> None: ...
    async def webhook_history(self, task_id: str, owner: str) -> list[DeliveryRecord]: ...
