"""Durable webhook delivery from the outbox: signed, retried, in order per task.

Messages are written by the store in the same transaction as the status change they
announce; this loop claims due messages with a lease (so several worker processes can share
the outbox), posts them through the outbound guard, and records each attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from imagegate.logs import request_id_var, task_id_var
from imagegate.metrics import WEBHOOK_DELIVERIES
from imagegate.net import OutboundError, make_client, post_json_guarded
from imagegate.settings import Settings
from imagegate.store import Store
from imagegate.store.base import OutboxMessage
from imagegate.webhooks.secrets import SecretBook
from imagegate.webhooks.signing import webhook_headers
from imagegate.worker.loop import WakeableLoop

log = logging.getLogger("imagegate.webhooks")

# Receivers that say "slow down" get at least the time they ask for (capped at a day).
RETRY_AFTER_STATUSES = {429, 502, 503, 504}
MAX_RETRY_AFTER = 86400.0


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        return None


class WebhookDispatcher:
    def __init__(
        self, store: Store, secrets: SecretBook, settings: Settings, worker_id: str
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.settings = settings
        self.worker_id = worker_id
        self.delays = settings.webhook_retry_delays
        self._loop = WakeableLoop(
            self._claim, settings.poll_interval_seconds, "claiming webhook messages"
        )
        self._running: set[asyncio.Task[None]] = set()
        self._client = make_client()

    def start(self) -> None:
        self._loop.start()

    def notify(self) -> None:
        self._loop.wake()

    async def stop(self, grace: float) -> None:
        await self._loop.stop()
        if self._running:
            # Unfinished deliveries keep their lease and are retried when it expires.
            await asyncio.wait(self._running, timeout=grace)
            for task in self._running:
                task.cancel()
        await self._client.aclose()

    async def _claim(self) -> None:
        free = self.settings.webhook_concurrency - len(self._running)
        if free <= 0:
            return
        # The lease outlasts one attempt's timeout, so a live delivery is never taken over.
        lease = self.settings.webhook_timeout_seconds * 3
        for message in await self.store.claim_webhooks(self.worker_id, lease, free):
            task = asyncio.create_task(self._deliver(message))
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery crashed", exc_info=task.exception())
        self._loop.wake()  # a slot is free, and the task's next message may now be due

    def next_delay(self, attempts: int, retry_after: float | None) -> float | None:
        """Seconds until the next attempt after `attempts` tries, or None when they are used up."""
        if attempts > len(self.delays):
            return None
        delay = self.delays[attempts - 1] * random.uniform(0.9, 1.1)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _deliver(self, message: OutboxMessage) -> None:
        request_id_var.set(message.request_id)
        task_id_var.set(message.task_id)
        secrets = await self.secrets.for_owner(message.owner)
        if not secrets:
            await self._record(
                message, None, "the API key that owns this task no longer exists", 0.0, None
            )
            return
        body = message.payload.encode()
        headers = webhook_headers(secrets, message.id, int(time.time()), body)
        status: int | None = None
        error: str | None = None
        elapsed = 0.0
        retry_after: float | None = None
        try:
            result = await post_json_guarded(
                message.url,
                body,
                headers,
                timeout=self.settings.webhook_timeout_seconds,
                allow_private=self.settings.allow_private_urls,
                client=self._client,
            )
            status, elapsed = result.status_code, result.elapsed_ms
            if status in RETRY_AFTER_STATUSES:
                retry_after = parse_retry_after(result.headers.get("retry-after"))
        except OutboundError as exc:
            error = exc.reason
        if status is not None and 200 <= status < 300:
            log.info(
                "webhook %s (%s) delivered: HTTP %d in %.0f ms",
                message.id,
                message.status,
                status,
                elapsed,
            )
            await self._record(message, status, None, elapsed, "delivered")
            return
        if status == 410:
            await self._record(
                message,
                status,
                "the receiver answered 410 Gone: no more attempts",
                elapsed,
                "failed",
            )
            return
        error = error or f"the receiver answered HTTP {status}"
        delay = self.next_delay(message.attempts, retry_after)
        if delay is None:
            await self._record(
                message,
                status,
                f"{error}; gave up after {message.attempts} attempts",
                elapsed,
                "failed",
            )
            return
        log.info(
            "webhook %s for task %s: %s; next attempt in %.0f s",
            message.id,
            message.task_id,
            error,
            delay,
        )
        await self._record(message, status, error, elapsed, "pending", time.time() + delay)

    async def _record(
        self,
        message: OutboxMessage,
        status: int | None,
        error: str | None,
        elapsed: float,
        state: str | None,
        next_attempt_at: float | None = None,
    ) -> None:
        WEBHOOK_DELIVERIES.labels("retry" if state == "pending" else (state or "failed")).inc()
        await self.store.record_webhook_attempt(
            message.id,
            self.worker_id,
            task_id=message.task_id,
            attempt=message.attempts,
            status_code=status,
            error=error,
            duration_ms=elapsed,
            next_attempt_at=next_attempt_at,
            state=state or "failed",
        )
