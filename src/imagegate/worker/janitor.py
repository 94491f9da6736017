"""Retention: finished tasks and their images go after IMAGEGATE_RETENTION_DAYS; expired
Idempotency-Keys after IMAGEGATE_IDEMPOTENCY_HOURS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from imagegate.settings import Settings
from imagegate.storage import BlobStorage
from imagegate.store import Store

log = logging.getLogger("imagegate.retention")


class Janitor:
    def __init__(self, store: Store, storage: BlobStorage, settings: Settings) -> None:
        self.store = store
        self.storage = storage
        self.settings = settings
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> int:
        """One pass; returns how many tasks were purged."""
        now = time.time()
        await self.store.forget_idempotency(now - self.settings.idempotency_hours * 3600)
        if self.settings.retention_days <= 0:
            return 0
        purged = await self.store.purge_tasks(now - self.settings.retention_days * 86400)
        for task in purged:
            await self.storage.delete_prefix(f"outputs/{task.id}")
            await self.storage.delete_prefix(f"references/{task.id}")
        if purged:
            log.info(
                "retention: purged %d task(s) older than %g days",
                len(purged),
                self.settings.retention_days,
            )
        return len(purged)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="imagegate-retention")

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("retention sweep failed; trying again later")
            await asyncio.sleep(self.settings.retention_sweep_seconds)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
