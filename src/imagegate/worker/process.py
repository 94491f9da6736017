"""Everything a worker process runs: the engine, the task worker and the webhook dispatcher.

`imagegate serve` runs one inside the API process (embedded default); `imagegate worker`
runs one on its own.
"""

from __future__ import annotations

import logging

from imagegate.engines import Engine, build_engine
from imagegate.settings import Settings
from imagegate.storage import BlobStorage
from imagegate.store import Store
from imagegate.tasks.events import TaskEvents
from imagegate.webhooks.dispatcher import WebhookDispatcher
from imagegate.webhooks.secrets import SecretBook, load_static_secret
from imagegate.worker.janitor import Janitor
from imagegate.worker.runner import Worker, make_worker_id

log = logging.getLogger("imagegate.worker")


class WorkerRuntime:
    def __init__(
        self,
        store: Store,
        storage: BlobStorage,
        settings: Settings,
        *,
        engine: Engine | None = None,
        events: TaskEvents | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine or build_engine(settings)
        self.events = events or TaskEvents()
        worker_id = make_worker_id()
        self.webhooks = WebhookDispatcher(
            store, SecretBook(store, load_static_secret(settings)), settings, worker_id
        )
        self.worker = Worker(
            store, storage, self.engine, settings, worker_id=worker_id, on_change=self._changed
        )

        self.janitor = Janitor(store, storage, settings)

    def _changed(self, task_id: str) -> None:
        self.webhooks.notify()
        self.events.publish(task_id)

    async def start(self) -> None:
        await self.engine.start()
        log.info(
            "worker %s: engine %s; %d task(s) at once",
            self.worker.worker_id,
            self.engine.describe(),
            self.worker.concurrency,
        )
        self.worker.start()
        self.webhooks.start()
        self.janitor.start()

    def notify(self) -> None:
        self.worker.notify()

    def on_store_event(self, kind: str, task_id: str | None) -> None:
        """A change made by another process (PostgreSQL notifications)."""
        if kind == "created":
            self.worker.notify()
        elif kind == "webhook":
            self.webhooks.notify()
        elif kind == "changed" and task_id:
            self.events.publish(task_id)

    async def stop(self) -> None:
        await self.janitor.stop()
        grace = self.settings.shutdown_grace_seconds
        await self.worker.stop(grace=grace)
        await self.webhooks.stop(grace=min(grace, self.settings.webhook_timeout_seconds))
        await self.engine.close()
